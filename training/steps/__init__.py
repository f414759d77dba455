"""The steps of the recipe, one module each, as mixins of `training.driver.Driver` (which holds the
unit graph that orders them): `data`, `organ_models` (1), `tumor_models` (2), `pseudo_tumors` (3),
`tumor_retraining` (4), `weights_folder` (export), `validation` (evaluate).
"""
