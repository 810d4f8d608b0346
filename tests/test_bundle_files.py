"""The model zoo's checks on the bundle's files, re-implemented from the zoo's CI (ci/verify_bundle.py) and its
contributing guide: required files, metadata against MONAI's schema (offline copy beside the data), version and
changelog, every package the scripts import declared, metadata pins within the tested range, and the shape check
and TorchScript export of ``inference.yaml`` alone with fake weights, in a copy of the bundle."""

import ast
import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions

import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata
from packaging.version import Version

from conftest import BUNDLE, DATA_DIR

META = BUNDLE / "configs" / "metadata.json"


def schema_path():
    path = DATA_DIR.parent / "schemas" / "meta_schema_20240725.json"
    if not path.is_file():
        pytest.skip(f"{path} not found: set DIFFMIC_DATA_DIR so that ../schemas lies beside it")
    return path


def metadata() -> dict:
    return json.loads(META.read_text())


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_metadata_passes_the_model_zoo_schema():
    verify_metadata(meta_file=str(META), filepath=str(schema_path()))


def test_metadata_missing_a_required_field_fails(tmp_path):
    meta = metadata()
    del meta["task"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="task"):
        verify_metadata(meta_file=str(broken), filepath=str(schema_path()))


def test_the_files_the_model_zoo_requires_are_there_and_weights_are_accounted_for():
    for name in ("configs/metadata.json", "configs/inference.yaml", "configs/train.yaml", "configs/evaluate.yaml"):
        assert (BUNDLE / name).is_file(), name
    for name in ("configs/logging.conf", "docs/README.md", "LICENSE"):
        assert (BUNDLE / name).is_file(), name
    large_files = BUNDLE / "large_files.yml"
    if large_files.is_file():  # the zoo downloads them before its checks: real addresses and hashes only
        import yaml

        for entry in yaml.safe_load(large_files.read_text())["large_files"]:
            assert entry["url"].startswith("https://") and entry.get("hash_val"), entry
    else:  # no hosted weights: the docs say where model.pt comes from
        assert "no `large_files.yml`" in (BUNDLE / "docs" / "README.md").read_text()


def test_version_is_the_newest_changelog_entry():
    meta = metadata()
    versions = list(meta["changelog"])
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in versions), versions
    assert versions == sorted(versions, key=Version, reverse=True)  # newest first, no duplicates
    assert meta["version"] == versions[0]


def test_every_package_the_bundle_imports_is_declared_in_the_metadata():
    modules = set()
    for path in (BUNDLE / "scripts").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    for path in (BUNDLE / "configs").rglob("*.yaml"):
        modules |= set(re.findall(r"^- \$import (\w+)", path.read_text(), re.MULTILINE))
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m != "scripts"}
    meta = metadata()
    declared = {normalized(p) for p in meta["required_packages_version"]} | {"monai", "torch", "numpy"}
    distributions = packages_distributions()
    undeclared = [m for m in sorted(third_party) if not {normalized(d) for d in distributions[m]} & declared]
    assert not undeclared, f"imported by the bundle, not in required_packages_version: {undeclared}"


def test_metadata_pins_lie_in_the_range_the_bundle_is_tested_with():
    """The metadata pins the oldest versions (they install on the Python 3.10 of the zoo's CI); requirements.txt
    the newest, which CI tests; neither may be older than the other's claim."""
    tested = {}
    for line in (BUNDLE.parent / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            tested[normalized(name)] = Version(version)
    meta = metadata()
    pins = {normalized(k): v for k, v in meta["required_packages_version"].items()}
    pins.update(monai=meta["monai_version"], torch=meta["pytorch_version"], numpy=meta["numpy_version"])
    for name, version in pins.items():
        assert name in tested, f"{name} is pinned in the metadata but not in requirements.txt"
        assert Version(version) <= tested[name], (name, version, tested[name])


def test_the_zoo_exports_inference_yaml_alone_with_fake_weights(tmp_path):
    """As the zoo's CI runs it: a copy of the bundle, `inference.yaml` alone, random weights saved as model.pt.
    (Its shape check, verify_net_in_out on inference.yaml alone, is tests/test_model_zoo.py's.)"""
    bundle = tmp_path / "diffmic"
    for name in ("configs", "scripts"):
        shutil.copytree(BUNDLE / name, bundle / name, ignore=shutil.ignore_patterns("__pycache__"))
    (bundle / "models").mkdir()
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    common = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml"]
    common += ["--bundle_root", str(bundle)]
    command = ["ckpt_export", "network_def", "--filepath", "models/verify_model.ts", "--ckpt_file", "models/model.pt"]
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *command, *common], cwd=bundle, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    exported = torch.jit.load(str(bundle / "models" / "verify_model.ts"))
    meta = metadata()["network_data_format"]
    shape = meta["inputs"]["image"]["spatial_shape"]
    with torch.no_grad():
        out = exported(torch.rand(1, meta["inputs"]["image"]["num_channels"], *shape))
    assert out.shape == (1, meta["outputs"]["pred"]["num_channels"])


def test_the_docs_readme_is_self_contained():
    """The model zoo ships bundle/ alone: every relative link of docs/README.md (figures, benchmarks.md, the
    licence) resolves to a file inside the bundle."""
    docs = BUNDLE / "docs"
    targets = re.findall(r"\]\(([^)#\s]+)", (docs / "README.md").read_text())
    relative = [t for t in targets if "://" not in t]
    assert relative, "no links found"
    outside = [t for t in relative if BUNDLE.resolve() not in (docs / t).resolve().parents]
    missing = [t for t in relative if not (docs / t).exists()]
    assert not outside and not missing, (outside, missing)


def test_the_docs_readme_links_to_sections_that_exist():
    """Links such as ``benchmarks.md#speed-and-memory`` name a heading of that page (GitHub's anchors: lower
    case, punctuation but hyphens dropped, spaces as hyphens)."""
    docs = BUNDLE / "docs"

    def anchors(page: str) -> set[str]:
        text = re.sub(r"```.*?```", "", (docs / page).read_text(), flags=re.S)
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}

    links = re.findall(r"\]\(([\w.]+\.md)#([^)\s]+)\)", (docs / "README.md").read_text())
    assert links, "no links to sections found"
    assert [link for link in links if link[1] not in anchors(link[0])] == []
