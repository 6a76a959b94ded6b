"""Pretrained-weight import: torchvision (`convert.torchvision`) and TF-slim (`convert.tf_slim`).

Both converters follow one contract: every source tensor is either consumed (copied into exactly one
deeplax variable, shape-checked) or explicitly accounted for (`ignored`: bookkeeping such as
num_batches_tracked / global_step; `dropped`: a part the target model does not have, such as the
ImageNet classifier). Unknown source keys, deeplax variables left without a source and shape
mismatches are all errors listing the offending names -- nothing is silently skipped.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

Path = Tuple[str, ...]   # ('params', 'backbone', 'conv1', 'kernel')


class ConversionError(ValueError):
  """A source checkpoint that does not convert completely and exactly."""


@dataclasses.dataclass
class ConversionReport:
  consumed: List[str] = dataclasses.field(default_factory=list)
  ignored: List[str] = dataclasses.field(default_factory=list)
  dropped: List[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    lines = [f"consumed {len(self.consumed)} tensors"]
    if self.ignored:
      lines.append(f"ignored (bookkeeping) {len(self.ignored)}: "
                   + _abbrev(self.ignored))
    if self.dropped:
      lines.append(f"dropped (not part of the target model) {len(self.dropped)}: "
                   + _abbrev(self.dropped))
    return "\n".join(lines)


def _abbrev(names: Sequence[str], limit: int = 6) -> str:
  names = list(names)
  return ", ".join(names[:limit]) + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


@dataclasses.dataclass(frozen=True)
class Rule:
  """Source tensor `source` -> deeplax variable `target` through `transform` (e.g. a transpose)."""
  source: str
  target: Path
  transform: Optional[Callable[[np.ndarray], np.ndarray]] = None


def flatten(tree: Mapping[str, Any], prefix: Path = (), keep_empty: bool = False
            ) -> Dict[Path, Any]:
  """{path tuple: leaf}; with `keep_empty` an empty mapping is a leaf ({}) rather than dropped."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and (v or not keep_empty):
      out.update(flatten(v, prefix + (str(k),), keep_empty))
    else:
      out[prefix + (str(k),)] = v
  return out


def unflatten(flat: Mapping[Path, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def apply_rules(source: Mapping[str, np.ndarray], rules: Sequence[Rule],
                target_shapes: Mapping[Path, Tuple[int, ...]], *,
                ignored: Sequence[str] = (), dropped: Sequence[str] = (),
                what: str = "checkpoint") -> Tuple[Dict[str, Any], ConversionReport]:
  """Fills every variable of `target_shapes` from `source` by `rules`; strict (see module doc).

  Raises ConversionError listing unknown source keys, missing source keys, deeplax variables no
  rule fills, and every shape mismatch (source name, converted shape, expected shape).
  """
  report = ConversionReport(ignored=sorted(ignored), dropped=sorted(dropped))
  accounted = set(ignored) | set(dropped)
  ruled = {r.source for r in rules}
  problems = []
  missing = sorted(r.source for r in rules if r.source not in source)
  if missing:
    problems.append(f"missing from the {what} ({len(missing)}): {', '.join(missing)}")
  unknown = sorted(k for k in source if k not in ruled and k not in accounted)
  if unknown:
    problems.append(f"unknown {what} keys, not part of this architecture ({len(unknown)}): "
                    f"{', '.join(unknown)}")
  targets = {r.target for r in rules}
  unfilled = sorted("/".join(p) for p in target_shapes if p not in targets)
  if unfilled:
    problems.append(f"deeplax variables with no source ({len(unfilled)}): {', '.join(unfilled)}")
  not_in_model = sorted("/".join(r.target) for r in rules if r.target not in target_shapes)
  if not_in_model:
    problems.append(f"conversion targets absent from the deeplax model ({len(not_in_model)}): "
                    f"{', '.join(not_in_model)}")
  flat: Dict[Path, np.ndarray] = {}
  mismatched = []
  for rule in rules:
    if rule.source not in source or rule.target not in target_shapes:
      continue
    value = np.asarray(source[rule.source])
    if rule.transform is not None:
      value = rule.transform(value)
    want = tuple(target_shapes[rule.target])
    if tuple(value.shape) != want:
      mismatched.append(f"{rule.source}: shape {tuple(np.shape(source[rule.source]))} converts to "
                        f"{tuple(value.shape)}, deeplax {'/'.join(rule.target)} expects {want}")
      continue
    flat[rule.target] = np.ascontiguousarray(value, dtype=np.float32)
    report.consumed.append(rule.source)
  if mismatched:
    problems.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
  if problems:
    raise ConversionError(f"{what} does not convert cleanly:\n  - " + "\n  - ".join(problems))
  return unflatten(flat), report


def conv_kernel_from_oihw(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight [O, I, kh, kw] -> flax kernel [kh, kw, I, O]."""
  if w.ndim != 4:
    return w  # left as is: apply_rules reports the shape mismatch by name
  return np.transpose(w, (2, 3, 1, 0))


def abstract_variables(model_config, image_size: Tuple[int, int] = (65, 65)) -> Dict[Path, Tuple]:
  """Flat {path: shape} of the deeplax model's variables (jax.eval_shape: no compute, no memory)."""
  import jax
  import jax.numpy as jnp
  from deeplax import models
  model = models.build(model_config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_size, 3), jnp.float32),
                         train=False))
  return {p: tuple(v.shape) for p, v in flatten(dict(shapes)).items()}
