"""RetinaFace face detector, batched over images of any sizes, on torch or ONNX Runtime.

``network`` the torch modules, ``weights`` reading and checking published weights, ``decode``
priors, decoding and NMS, ``batching`` what both detectors share (loading, checks, canvas
packing), ``torch_detector`` and ``onnx_detector`` the two runtimes.
"""
