from .diffmic import DiffMICClassification, image_id

__all__ = ["DiffMICClassification", "image_id"]
