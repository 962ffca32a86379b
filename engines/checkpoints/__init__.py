"""Detector bundles, base towers, and importers of the published LN-CLIP checkpoints.

One concept per module: ``keymap`` (HF/open_clip names, finding tower and head), ``safe_load``
(reading foreign files without running their code), ``files`` (our self-describing safetensors),
``base`` (frozen base towers), ``bundle`` (the detector bundle and the model it describes),
``importers`` (published detectors into bundles), ``catalog`` (what the store holds) and ``pull``
(fetching hub models into the store).
"""
