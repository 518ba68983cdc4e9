"""Loss weighting for imbalanced catalogues: IDW density weighting and baselines.

* `density`: IDW's sleep-phase maths (eqs. 7-9, Scott's bandwidth, the stopping
  rule), numpy only, exact or bounded-memory for large catalogues.
* `idw`: Algorithm 1 as a training schedule (`TrainConfig.weighting = "idw"`): the
  `DensityWeighting` callback, `IDWState`, user-tower calibration.
* `baselines`: no weighting and frequency balance (eq. 5).

Each weighting registers its schedule in `tfrec_proxy.registry.WEIGHTINGS`.
"""
