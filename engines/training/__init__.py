"""LN-tuning of the CLIP detector on prepared face crops: the papers' trainable set, losses on
the normalised feature, slerp feature augmentation, paired real/fake sampling, and the loop that
writes a detector bundle."""
