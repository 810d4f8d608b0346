"""The bundle's metadata against MONAI's schema (offline copy beside the data)."""

import json

import pytest
from monai.bundle import verify_metadata

from conftest import BUNDLE, DATA_DIR


def schema_path():
    path = DATA_DIR.parent / "schemas" / "meta_schema_20240725.json"
    if not path.is_file():
        pytest.skip(f"{path} not found: set DIFFMIC_DATA_DIR so that ../schemas lies beside it")
    return path


def test_metadata_passes_the_model_zoo_schema():
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(schema_path()))


def test_metadata_missing_a_required_field_fails(tmp_path):
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    del meta["task"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="task"):
        verify_metadata(meta_file=str(broken), filepath=str(schema_path()))
