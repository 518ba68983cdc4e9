"""Loss weighting for imbalanced catalogues: IDW density weighting and baselines."""
