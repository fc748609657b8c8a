"""The image side: pretrained CNN weights -> ONNX encoder -> one feature vector per photo, stored once.

    encoders/       PyTorch .pth files read WITHOUT torch (restricted unpickler) -> ONNX graphs built with
                    onnx.helper: EfficientNet-Lite0 (1280-d at 224x224) and Inception v3 (2048-d at 299x299);
                    EncoderSpec + Pillow preprocessing
    extract.py      photos -> ONNX Runtime -> FeatureStore: decoding overlapped with inference, resumable, atomic
    store.py        the FeatureStore: ids, features, optional spatial maps and a manifest, loaded safely
    download.py     COCO photos (and their captions) from the internet or a mirror, verified, resumable
    annotations.py  COCO's official caption files: one member of the annotations zip, read by HTTP range requests
    fetch.py        what every download shares: mirror, retries, resumable `.part` files, checks, the cache folder

Nothing here knows `minicap.nn` or the models: features are plain arrays by the time a model sees them.
"""
