"""Data: archives, the dataset registry, TFDS builders, preprocessing, splits, augmentation.

`registry` names every dataset charjax knows (`DatasetSpec`); `input_pipeline` prepares a
dataset once (TFDS ArrayRecord), loads it and splits it; `preprocess` turns stored images
into model input (shared with `charjax.predict`); `augment` is on-device augmentation.
"""
