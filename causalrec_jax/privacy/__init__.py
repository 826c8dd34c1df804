"""Private training: DP-SGD with an accounted budget (`dpsgd`, `accounting`).

`dpsgd` holds the step (Poisson-sampled units, per-unit clipping over the gathered embedding
rows, Gaussian noise); `accounting` turns a run's noise, sampling rate and steps into its
(epsilon, delta) with Google's `dp-accounting`, or calibrates the noise to a target epsilon.
An ordinary run is private with `[privacy] level = "user"` (or `"example"`): see the README,
"Private training".
"""
