from .infers import DiffMICClassification

__all__ = ["DiffMICClassification"]
