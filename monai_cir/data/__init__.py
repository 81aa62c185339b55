"""Data: collections, preprocessing, clinical report text and cross-validation folds."""

from .preprocess import PreprocessImaged, RemoveBlackBorder, load_image, preprocess_image, remove_black_border, to_rgb_uint8

__all__ = ["PreprocessImaged", "RemoveBlackBorder", "load_image", "preprocess_image", "remove_black_border", "to_rgb_uint8"]
