"""Datasets for training and evaluating the detector.

``manifest``: what a dataset is (a CSV/JSONL manifest or a ``split/label`` folder tree of videos
or frame folders, each fake naming the real video it was made from) and its validation.
``synth``: a small SYNTHETIC face-forgery set built from the astronaut photograph, for tests and
demos only.
"""
