"""Parameters of the fully-connected CRF (v2 §3.3, the energy of Krähenbühl & Koltun 2011)."""

import dataclasses

# Kernel normalisations of Krähenbühl's second code (pydensecrf's NormalizationType). With K the
# Gaussian filter and k = K 1: "none": K Q (no scaling); "before": K(Q / k); "after": K(Q) / k
# (his first code, used by DeepLab); "symmetric": K(Q / sqrt(k)) / sqrt(k) (pydensecrf's default).
NORMALIZATIONS = ("none", "before", "after", "symmetric")
SPATIAL_FILTERS = ("lattice", "separable")


@dataclasses.dataclass(frozen=True)
class CRFParams:
  """Weights and Gaussian widths of the two pairwise kernels (v2 §3.3).

  Bilateral kernel w1 exp(-|p_i-p_j|^2 / 2 sigma_alpha^2 - |I_i-I_j|^2 / 2 sigma_beta^2) and
  spatial kernel w2 exp(-|p_i-p_j|^2 / 2 sigma_gamma^2), positions in pixels, colours in 0..255
  RGB, each with Potts compatibility. `normalization` is one of NORMALIZATIONS.
  `spatial_filter`: "lattice" filters the spatial kernel on a 2-d permutohedral lattice as
  Krähenbühl's code does (matches pydensecrf); "separable" uses an exact separable Gaussian
  convolution on the pixel grid (truncated at 5 sigma), which differs from the lattice's
  approximate Gaussian by a few percent of the filtered values.
  """
  w1: float = 4.0
  sigma_alpha: float = 67.0
  sigma_beta: float = 3.0
  w2: float = 3.0
  sigma_gamma: float = 1.0
  normalization: str = "after"
  spatial_filter: str = "lattice"

  def validate(self) -> "CRFParams":
    for name in ("sigma_alpha", "sigma_beta", "sigma_gamma"):
      value = getattr(self, name)
      if not value > 0:
        raise ValueError(f"CRFParams.{name} must be > 0; got {value}")
    for name in ("w1", "w2"):
      value = getattr(self, name)
      if not (value >= 0 and value < float("inf")):
        raise ValueError(f"CRFParams.{name} must be a finite weight >= 0; got {value}")
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"CRFParams.normalization must be one of {NORMALIZATIONS}; "
                       f"got {self.normalization!r}")
    if self.spatial_filter not in SPATIAL_FILTERS:
      raise ValueError(f"CRFParams.spatial_filter must be one of {SPATIAL_FILTERS}; "
                       f"got {self.spatial_filter!r}")
    return self

  @classmethod
  def deeplab_v2_resnet101_voc(cls) -> "CRFParams":
    """DeepLab v2 ResNet-101 on PASCAL VOC 2012: 10 iterations, w1=4, σα=67, σβ=3, w2=3, σγ=1.

    Values cross-validated as in v2 §4.1 ("CRF" paragraph) and published with the v2 release
    (DeepLab-ResNet-101 VOC12 model, densecrf settings of its test prototxt). DeepLab ran
    Krähenbühl's first code, which normalises after filtering.
    """
    return cls(w1=4.0, sigma_alpha=67.0, sigma_beta=3.0, w2=3.0, sigma_gamma=1.0,
               normalization="after")

  @classmethod
  def deeplab_v1_largefov(cls) -> "CRFParams":
    """DeepLab v1 / v2 VGG-16 LargeFOV on VOC 2012: w1=4, σα=121, σβ=5, w2=3, σγ=3.

    Settings published with the DeepLab-LargeFOV release (v1, ICLR 2015 §4 / v2 §4.1 defaults
    w2=3, σγ=3 and cross-validated w1, σα, σβ), 10 mean-field iterations, Krähenbühl's first
    code (normalise after filtering).
    """
    return cls(w1=4.0, sigma_alpha=121.0, sigma_beta=5.0, w2=3.0, sigma_gamma=3.0,
               normalization="after")


PRESETS = {
    "deeplab_v2_resnet101_voc": CRFParams.deeplab_v2_resnet101_voc,
    "deeplab_v1_largefov": CRFParams.deeplab_v1_largefov,
}
