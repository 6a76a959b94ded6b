"""Permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) in static shapes.

High-dimensional Gaussian filtering for the dense CRF's message passing (v2 §3.3; Krähenbühl &
Koltun, NIPS 2011, §4). Each of the N d-dimensional feature vectors is lifted onto the
hyperplane of R^{d+1} (elevation matrix, Adams et al. §3.1), located in a simplex of the A*_d
lattice, and splatted to the d+1 simplex vertices with barycentric weights (§3.2); the lattice
values are blurred with [1 2 1] along each of the d+1 lattice directions (§3.3) and sliced back
with the same weights (§3.4). The scale factor sqrt(2/3)(d+1), the blur with weights
(1/2, 1, 1/2) and the slice factor 1 / (1 + 2^-d) follow Krähenbühl's implementation.

Static shapes instead of a hash table: every vertex key is packed bijectively into a uint32
(remainder class, then a mixed-radix index over the bounding box of the key coordinates), the
keys are de-duplicated by one `jnp.sort`, each (pixel, vertex) finds its lattice point and each
lattice point its n1 blur neighbours by `searchsorted` in the sorted unique keys (n2 is the
inverse of n1); points are then renumbered in order of first use by the pixels (memory
locality). Per iteration (XLA CPU specifics, measured on 2 cores): the splat scatter-adds
block by block of pixels (the weighted [block, d+1, C] rows stay in cache), lattice tables
have rows of a multiple of 16 floats (aligned row gathers: the blur runs ~1.5-2x faster), and
the blur writes its used chunks into a ping-pong buffer, and mean-field iterations filter in
two reused tables (`weighted_filter`'s workspace: only the rows of the points in use are zeroed
per call, instead of capacity-sized zero tables and their copies). Key boxes beyond 32 bits (large
images with small sigmas) need `key_words=2`: two uint32 words, a two-key sort and a
vectorised binary search (slower, same lattice). The lattice holds at most `capacity` points;
more points, or keys that do not fit, set `overflow` (the caller must check it:
`deeplax.crf.dense_crf` reruns with the exact bounds, then raises). Built once per image,
reused by every mean-field iteration. No gradient flows into the lattice (it depends on the
image only); splat, slice and blur have custom VJPs (splat and slice are each other's
transpose; the blur's is the blur in the opposite order of directions).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_SENTINEL = np.uint32(0xFFFFFFFF)  # key of padded (invalid) pixels; never a real key.
_CHUNK = 8192  # lattice points per chunk of the blur and neighbour look-ups; capacity is a multiple.
_SPLAT_BLOCK = 4096  # pixels per block of the splat's scatter-add.


class Lattice(NamedTuple):
  """A permutohedral lattice built for N feature vectors (all integer arrays are int32)."""
  vertex_NR: jax.Array      # int32 [N, d+1]: lattice point of each simplex vertex (capacity = none)
  weight_NR: jax.Array      # float32 [N, d+1]: barycentric weights (0 for invalid pixels)
  blur_n1_JM: jax.Array     # int32 [d+1, capacity+1]: neighbour key - 1 + (d+1) e_j
  blur_n2_JM: jax.Array     # int32 [d+1, capacity+1]: neighbour key + 1 - (d+1) e_j
  num_points: jax.Array     # int32 []: lattice points in use
  overflow: jax.Array       # bool []: more than `capacity` points, or the key box exceeds 32 bits


def _elevate(features_ND):
  """Lift features onto the plane sum(x) = 0 of R^{d+1}, scaled as Krähenbühl's code."""
  d = features_ND.shape[-1]
  inv_std_dev = np.sqrt(2.0 / 3.0) * (d + 1)
  scale = inv_std_dev / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
  cf = features_ND * scale.astype(np.float32)
  # suffix[j] = sum_{i >= j} cf[i]; elevated[0] = suffix[0], elevated[j] = suffix[j] - j cf[j-1].
  suffix = jnp.flip(jnp.cumsum(jnp.flip(cf, -1), -1), -1)
  suffix = jnp.concatenate([suffix, jnp.zeros_like(suffix[:, :1])], -1)
  j = np.arange(1, d + 1, dtype=np.float32)
  return jnp.concatenate([suffix[:, :1], suffix[:, 1:] - j * cf], -1)


def _simplex(elevated_NR):
  """Closest remainder-0 point, rank of each coordinate and barycentric weights (Adams §3.2)."""
  n, d1 = elevated_NR.shape
  d = d1 - 1
  v = elevated_NR / d1
  up = jnp.ceil(v) * d1
  down = jnp.floor(v) * d1
  rem0 = jnp.where(up - elevated_NR < elevated_NR - down, up, down).astype(jnp.int32)
  total = jnp.sum(rem0, -1) // d1
  diff = elevated_NR - rem0.astype(elevated_NR.dtype)
  # rank[i] = #{j > i: diff_j > diff_i} + #{j < i: diff_j >= diff_i} (ties as Krähenbühl's loop).
  i_idx = np.arange(d1)[:, None]
  j_idx = np.arange(d1)[None, :]
  greater = diff[:, None, :] > diff[:, :, None]
  greater_eq = diff[:, None, :] >= diff[:, :, None]
  rank = jnp.sum(jnp.where(j_idx > i_idx, greater, jnp.where(j_idx < i_idx, greater_eq, False)),
                 -1).astype(jnp.int32)
  rank = rank + total[:, None]
  rem0 = jnp.where(rank < 0, rem0 + d1, jnp.where(rank > d, rem0 - d1, rem0))
  rank = jnp.where(rank < 0, rank + d1, jnp.where(rank > d, rank - d1, rank))
  diff = (elevated_NR - rem0.astype(elevated_NR.dtype)) / d1
  # barycentric[d - rank_i] += diff_i, barycentric[d - rank_i + 1] -= diff_i, then wrap around.
  slot = d - rank
  bary = [jnp.sum(jnp.where(slot == k, diff, 0.0) - jnp.where(slot == k - 1, diff, 0.0), -1)
          for k in range(d + 2)]
  bary[0] = bary[0] + 1.0 + bary[d + 1]
  return rem0, rank, jnp.stack(bary[:d1], -1)


def build_lattice(features_ND, capacity: int, valid_N=None, key_words: int = 1) -> Lattice:
  """Builds the lattice for features float32 [N, d] (already divided by their sigmas).

  key_words (static): 1 packs each key in one uint32 (fast: a one-key sort and searchsorted);
  2 in two (a two-key sort and a binary search: slower, for key boxes beyond 32 bits).

  `valid_N` (bool [N], optional) marks real pixels; the others get no lattice points and zero
  weights, so a padded image filters exactly as the unpadded one. Jittable; `capacity` static.
  """
  n, d = features_ND.shape
  d1 = d + 1
  capacity = -(-capacity // _CHUNK) * _CHUNK if capacity > _CHUNK else capacity
  features_ND = jax.lax.stop_gradient(features_ND.astype(jnp.float32))
  if valid_N is None:
    valid_N = jnp.ones((n,), bool)
  rem0, rank, bary = _simplex(_elevate(features_ND))

  # Vertex r of the simplex: rem0 + canonical[r][rank], canonical[r][k] = r if k <= d - r else
  # r - (d+1). Every coordinate of a remainder-r key is r mod (d+1): key = r + (d+1) c.
  # rem0 is a multiple of d+1, so c = rem0 / (d+1) - [rank > d - r] (no division per vertex).
  r = np.arange(d1, dtype=np.int32)[None, :, None]                  # [1, R, 1]
  base = rem0[:, :d] // d1                                          # [N, d]
  coords = base[:, None, :] - (rank[:, None, :d] > d - r).astype(jnp.int32)  # c, [N, R, d]

  # Bounding box of the keys, with a margin of 1 for the blur neighbours: over the vertices c_k
  # goes from base_k - [rank_k > 0] (vertex d) to base_k (vertex 0), an [N, d] reduction.
  big = np.int32(2 ** 30)
  cmin = jnp.min(jnp.where(valid_N[:, None], base - (rank[:, :d] > 0), big), axis=0) - 1
  cmax = jnp.max(jnp.where(valid_N[:, None], base, -big), axis=0) + 1
  extent = (cmax - cmin + 1).astype(jnp.uint32)
  # One word: (r, c_0..c_{d-1}) mixed radix in a uint32. Two words (for large images or small
  # sigmas): (r, c_0..c_{s-1}) and (c_s..c_{d-1}), compared lexicographically.
  split = d if key_words == 1 else (d + 1) // 2
  limit = np.float32(2.0 ** 32 - 2 ** 25)
  ext_f = extent.astype(jnp.float32)
  key_overflow = (jnp.prod(ext_f[:split]) * d1 >= limit) | (jnp.prod(ext_f[split:]) >= limit)
  parts = [jnp.ones((1,), jnp.uint32), jnp.cumprod(extent[:split], dtype=jnp.uint32)[:-1]]
  if split < d:
    parts += [jnp.ones((1,), jnp.uint32), jnp.cumprod(extent[split:], dtype=jnp.uint32)[:-1]]
  strides = jnp.concatenate(parts)
  volume = jnp.prod(extent[:split], dtype=jnp.uint32)

  def pack(rem, c):
    lin = (c - cmin).astype(jnp.uint32) * strides
    hi = rem.astype(jnp.uint32) * volume + jnp.sum(lin[..., :split], -1, dtype=jnp.uint32)
    lo = jnp.sum(lin[..., split:], -1, dtype=jnp.uint32)
    return hi, lo

  def unpack(hi, lo):
    rem = (hi // volume).astype(jnp.int32)
    digits = jnp.concatenate([jnp.broadcast_to((hi % volume)[:, None], hi.shape + (split,)),
                              jnp.broadcast_to(lo[:, None], lo.shape + (d - split,))], -1)
    c = ((digits // strides) % extent).astype(jnp.int32) + cmin
    return rem, c

  hi_NR, lo_NR = pack(np.arange(d1, dtype=np.uint32)[None, :], coords)
  hi_NR = jnp.where(valid_N[:, None], hi_NR, _SENTINEL)
  lo_NR = jnp.where(valid_N[:, None], lo_NR, _SENTINEL)

  # De-duplicate: sort, mark first occurrences, compact into `capacity` slots.
  if key_words == 1:
    sorted_hi = jnp.sort(hi_NR.reshape(-1))
    sorted_lo = jnp.zeros_like(sorted_hi)
  else:
    sorted_hi, sorted_lo = jax.lax.sort((hi_NR.reshape(-1), lo_NR.reshape(-1)), num_keys=2)
  first = jnp.concatenate([jnp.ones((1,), bool), (sorted_hi[1:] != sorted_hi[:-1]) |
                           (sorted_lo[1:] != sorted_lo[:-1])])
  first = first & (sorted_hi != _SENTINEL)
  num_points = jnp.sum(first, dtype=jnp.int32)
  slot = jnp.where(first, jnp.cumsum(first, dtype=jnp.int32) - 1, capacity)
  unique_hi = jnp.full((capacity,), _SENTINEL, jnp.uint32).at[slot].set(sorted_hi, mode="drop")
  unique_lo = jnp.full((capacity,), _SENTINEL, jnp.uint32).at[slot].set(sorted_lo, mode="drop")
  used = jnp.minimum(num_points, capacity)

  def lookup(query_hi, query_lo):
    if key_words == 1:
      pos = jnp.searchsorted(unique_hi, query_hi, side="left", method="scan").astype(jnp.int32)
    else:  # lower bound of (hi, lo) by a vectorised binary search
      low = jnp.zeros(query_hi.shape, jnp.int32)
      high = jnp.full(query_hi.shape, used, jnp.int32)
      for _ in range(int(np.ceil(np.log2(capacity + 1)))):
        mid = (low + high) // 2
        mid_c = jnp.minimum(mid, capacity - 1)
        u_hi, u_lo = unique_hi[mid_c], unique_lo[mid_c]
        less = (u_hi < query_hi) | ((u_hi == query_hi) & (u_lo < query_lo))
        less = less & (mid < high)
        low = jnp.where(less, mid + 1, low)
        high = jnp.where(less, high, mid)
      pos = low
    pos_c = jnp.minimum(pos, capacity - 1)
    found = (pos < used) & (unique_hi[pos_c] == query_hi) & (unique_lo[pos_c] == query_lo)
    return jnp.where(found, pos_c, capacity)

  vertex_NR = jnp.where(valid_N[:, None], lookup(hi_NR, lo_NR), capacity)
  weight_NR = jnp.where(valid_N[:, None], bary, 0.0).astype(jnp.float32)

  # Decode each lattice point's (remainder, c) from its key, then look up its n1 neighbours
  # (key - 1 + (d+1) e_j) chunk by chunk, skipping chunks past num_points; n2 is n1's inverse.
  def n1_chunk(start, size):
    point_valid = start + jnp.arange(size) < num_points
    u_hi = jnp.where(point_valid, jax.lax.dynamic_slice_in_dim(unique_hi, start, size), 0)
    u_lo = jnp.where(point_valid, jax.lax.dynamic_slice_in_dim(unique_lo, start, size), 0)
    rem, c = unpack(u_hi, u_lo)                                             # [S], [S, d]
    eye = jnp.concatenate([jnp.eye(d, dtype=jnp.int32), jnp.zeros((1, d), jnp.int32)])
    # (r-1, c + e_j) for r >= 1; (d, c - 1 + e_j) for r = 0.
    n_rem = jnp.broadcast_to(jnp.where(rem == 0, d, rem - 1)[None], (d1, size))
    n_c = c[None] + eye[:, None, :] - jnp.where(rem == 0, 1, 0)[None, :, None]
    return jnp.where(point_valid[None], lookup(*pack(n_rem, n_c)), capacity)

  chunk = min(_CHUNK, capacity)
  blur_n1 = _chunked(num_points, capacity, chunk, lambda start: n1_chunk(start, chunk),
                     jnp.full((d1, capacity + 1), capacity, jnp.int32), 1)
  points = jnp.broadcast_to(jnp.arange(capacity + 1, dtype=jnp.int32), blur_n1.shape)
  rows = jnp.broadcast_to(jnp.arange(d1)[:, None], blur_n1.shape)
  blur_n2 = jnp.full_like(blur_n1, capacity).at[rows, blur_n1].set(points, mode="drop")
  blur_n2 = blur_n2.at[:, capacity].set(capacity)

  # Renumber the points in order of first use by the pixels (raster order), so that splat,
  # slice and blur touch memory nearly sequentially instead of in key order.
  entry = jnp.arange(n * d1, dtype=jnp.int32).reshape(n, d1)
  first_use = jnp.full((capacity + 1,), n * d1, jnp.int32).at[vertex_NR].min(entry)
  is_first = (first_use[vertex_NR] == entry) & (vertex_NR < capacity)
  rank = jnp.cumsum(is_first.reshape(-1), dtype=jnp.int32).reshape(n, d1) - 1
  renumber = jnp.full((capacity + 1,), capacity, jnp.int32).at[
      jnp.where(is_first, vertex_NR, capacity + 1)].set(rank, mode="drop")
  renumber = renumber.at[capacity].set(capacity)
  # old point of each new number (capacity past the points in use): gathers, not scatters, below.
  original = jnp.full((capacity + 1,), capacity, jnp.int32).at[
      jnp.where(is_first, rank, capacity + 1)].set(vertex_NR, mode="drop").at[capacity].set(
          capacity)
  vertex_NR = renumber[vertex_NR]

  def renumbered(neighbour_JM):
    return renumber[neighbour_JM[:, original]]

  overflow = (num_points > capacity) | key_overflow
  return Lattice(vertex_NR, weight_NR, renumbered(blur_n1), renumbered(blur_n2), num_points,
                 overflow)


def _padded_width(channels: int) -> int:
  # Lattice tables hold rows of a multiple of 16 floats: XLA CPU gathers whole aligned rows
  # much faster (the blur runs ~1.5x faster with 21 channels padded to 32).
  return channels if channels <= 8 else -(-channels // 16) * 16


def _zero_used_rows(lattice: Lattice, table_MC):
  """A reused table with the rows of the points in use (chunk-rounded) and the void row zeroed."""
  capacity = table_MC.shape[0] - 1
  chunk = min(_CHUNK, capacity)
  zeros = jnp.zeros((chunk, table_MC.shape[1]), table_MC.dtype)
  table_MC = _chunked(lattice.num_points, capacity, chunk, lambda start: zeros, table_MC, 0)
  return table_MC.at[capacity].set(0.0)


def _splat_impl(lattice: Lattice, values_NC, width: int, table_MC=None):
  n, c = values_NC.shape
  capacity = lattice.blur_n1_JM.shape[1] - 1
  # Scatter-add block by block of _SPLAT_BLOCK pixels: the [block, d+1, C] weighted values stay
  # in cache instead of a [N (d+1), C] array going through memory (~3x faster on XLA CPU).
  block = min(_SPLAT_BLOCK, n)

  def add(out, start, size):
    vertex = jax.lax.dynamic_slice_in_dim(lattice.vertex_NR, start, size)
    weight = jax.lax.dynamic_slice_in_dim(lattice.weight_NR, start, size)
    values = jax.lax.dynamic_slice_in_dim(values_NC, start, size)
    weighted = (weight[:, :, None] * values[:, None, :]).reshape(-1, c)
    return out.at[vertex.reshape(-1), :c].add(weighted, mode="promise_in_bounds")

  if table_MC is None:
    out = jnp.zeros((capacity + 1, width), values_NC.dtype)
  else:  # a workspace: only the rows that can be read again need zeros
    out = _zero_used_rows(lattice, table_MC)
  out = jax.lax.fori_loop(0, n // block, lambda i, out: add(out, i * block, block), out)
  if n % block:
    out = add(out, n - n % block, n % block)
  return out


def _gather_impl(lattice: Lattice, lattice_MC, channels: int):
  out = 0.0
  for r in range(lattice.vertex_NR.shape[1]):  # whole (aligned) rows, then the channels
    out = out + lattice.weight_NR[:, r:r + 1] * _take_rows(lattice_MC, lattice.vertex_NR[:, r])
  return out[:, :channels]


def _float0_zeros(lattice: Lattice):
  return jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0)
                      if not jnp.issubdtype(a.dtype, jnp.floating) else jnp.zeros_like(a),
                      lattice)


# Splat and gather are each other's transpose (the lattice, which depends on the image only,
# gets no gradient); custom VJPs keep the blocked scatter and the fused gather in both directions.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _splat(lattice: Lattice, values_NC, width: int):
  return _splat_impl(lattice, values_NC, width)


_splat.defvjp(lambda lattice, values_NC, width: (_splat_impl(lattice, values_NC, width),
                                                  (lattice, values_NC.shape[1])),
              lambda width, res, cotangent_MC: (_float0_zeros(res[0]),
                                                _gather_impl(res[0], cotangent_MC, res[1])))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _gather(lattice: Lattice, lattice_MC, channels: int):
  return _gather_impl(lattice, lattice_MC, channels)


_gather.defvjp(lambda lattice, lattice_MC, channels: (
                   _gather_impl(lattice, lattice_MC, channels), (lattice, lattice_MC.shape[1])),
               lambda channels, res, cotangent_NC: (
                   _float0_zeros(res[0]), _splat_impl(res[0], cotangent_NC, res[1])))


def splat(lattice: Lattice, values_NC):
  """Values float [N, C] at the inputs -> [capacity + 1, C'] at the lattice points (last row:
  the void); C' >= C is C rounded up to a multiple of 16 (columns past C are 0)."""
  return _splat(lattice, values_NC, _padded_width(values_NC.shape[1]))


def _take_rows(table_MC, index):
  return table_MC.at[index].get(mode="promise_in_bounds")


def _chunked(num_points, capacity, chunk, compute, init, axis):
  """out[..., s:s+chunk] = compute(s) along `axis` for chunks s < num_points; the rest keep init."""
  def body(i, out):
    return jax.lax.dynamic_update_slice_in_dim(out, compute(i * chunk), i * chunk, axis=axis)
  used = jnp.minimum((num_points + chunk - 1) // chunk, capacity // chunk)
  return jax.lax.fori_loop(0, used, body, init)


def _blur_impl(lattice: Lattice, lattice_MC, reverse: bool, spare_MC=None):
  """The blur -> (result, the other ping-pong buffer)."""
  d1, m1 = lattice.blur_n1_JM.shape
  capacity = m1 - 1
  chunk = min(_CHUNK, capacity)
  used = jnp.minimum((lattice.num_points + chunk - 1) // chunk, capacity // chunk)
  order = range(d1 - 1, -1, -1) if reverse else range(d1)
  x = lattice_MC.at[capacity].set(0.0)  # the void is 0 (also for cotangents)
  # Ping-pong: direction j writes its used chunks into the buffer of direction j-2 (updated in
  # place); rows past the used chunks are never read (the void row stays 0).
  spare = jnp.zeros_like(x) if spare_MC is None else spare_MC.at[capacity].set(0.0)
  for j in order:
    def rows(i, out, x=x, j=j):
      start = (i * chunk).astype(jnp.int32)
      n1 = jax.lax.dynamic_slice(lattice.blur_n1_JM, (jnp.int32(j), start), (1, chunk))[0]
      n2 = jax.lax.dynamic_slice(lattice.blur_n2_JM, (jnp.int32(j), start), (1, chunk))[0]
      own = jax.lax.dynamic_slice_in_dim(x, start, chunk)
      new = own + 0.5 * (_take_rows(x, n1) + _take_rows(x, n2))
      return jax.lax.dynamic_update_slice_in_dim(out, new, start, 0)

    x, spare = jax.lax.fori_loop(0, used, rows, spare), x
  return x, spare


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _blur(lattice: Lattice, lattice_MC, reverse: bool):
  return _blur_impl(lattice, lattice_MC, reverse)[0]


def _blur_fwd(lattice, lattice_MC, reverse):
  return _blur_impl(lattice, lattice_MC, reverse)[0], lattice


def _blur_bwd(reverse, lattice, cotangent_MC):
  # Each directional step x + (x[n1] + x[n2]) / 2 is symmetric (n2 is the inverse of n1), so
  # the transpose of the blur is the blur in the opposite order of directions.
  return _float0_zeros(lattice), _blur_impl(lattice, cotangent_MC, not reverse)[0]


_blur.defvjp(_blur_fwd, _blur_bwd)


def blur(lattice: Lattice, lattice_MC, reverse: bool = False):
  """[1 2 1] / 2 along each lattice direction j = 0..d (d..0 if `reverse`), void row kept 0.

  Points are processed in chunks by a while loop over the used chunks only, so the cost follows
  the lattice's size, not its capacity; reverse-mode autodiff uses the transposed blur. Rows
  past the points in use are unspecified (never read: no pixel and no neighbour points there).
  """
  return _blur(lattice, lattice_MC, reverse)


def _slice_scale(lattice: Lattice):
  """Krähenbühl's alpha = 1 / (1 + 2^-d) of the slice."""
  return 1.0 / (1.0 + 2.0 ** (1 - lattice.blur_n1_JM.shape[0]))


def slice_values(lattice: Lattice, lattice_MC, channels=None):
  """Lattice values -> float [N, channels] at the inputs (barycentric interpolation,
  Krähenbühl's alpha); `channels` (default: all) drops the splat's padding columns."""
  channels = lattice_MC.shape[1] if channels is None else channels
  return _slice_scale(lattice) * _gather(lattice, lattice_MC, channels)


def lattice_filter(lattice: Lattice, values_NC, reverse: bool = False):
  """Approximate Gaussian filter sum_j exp(-|f_i - f_j|^2 / 2) v_j (up to a constant factor)."""
  return slice_values(lattice, blur(lattice, splat(lattice, values_NC), reverse),
                      values_NC.shape[1])


# The same filter with two reused [capacity + 1, C'] tables (the workspace) instead of fresh
# zero tables: mean-field iterations carry the workspace, so each iteration zeroes only the
# rows of the points in use instead of materialising and copying capacity-sized zero tables
# (on XLA CPU ~3 ms of a ~25 ms iteration, and they slowed the softmax beside them). The workspace gets no gradient: only
# rows that are overwritten before they are read carry anything of the previous iteration.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _filter_ws(splat_lattice: Lattice, slice_lattice: Lattice, values_NC, workspace, reverse):
  return _filter_ws_impl(splat_lattice, slice_lattice, values_NC, workspace, reverse)


def _filter_ws_impl(splat_lattice, slice_lattice, values_NC, workspace, reverse):
  table, spare = workspace
  splatted = _splat_impl(splat_lattice, values_NC, table.shape[1], table)
  blurred, other = _blur_impl(splat_lattice, splatted, reverse, spare)
  out = _slice_scale(slice_lattice) * _gather_impl(slice_lattice, blurred, values_NC.shape[1])
  # Return each buffer in its own place (after an odd number of directions the result is in
  # `spare`), so that a loop carrying the workspace updates it in place, without copies.
  even = splat_lattice.blur_n1_JM.shape[0] % 2 == 0
  return out, ((blurred, other) if even else (other, blurred))


def _filter_ws_fwd(splat_lattice, slice_lattice, values_NC, workspace, reverse):
  return (_filter_ws_impl(splat_lattice, slice_lattice, values_NC, workspace, reverse),
          (splat_lattice, slice_lattice, workspace[0].shape[1]))


def _filter_ws_bwd(reverse, res, cotangents):
  splat_lattice, slice_lattice, width = res
  cotangent_NC = cotangents[0]
  # transpose: splat with the slice weights, reversed blur, gather with the splat weights
  back = _splat_impl(slice_lattice, _slice_scale(slice_lattice) * cotangent_NC, width)
  back = _blur_impl(splat_lattice, back, not reverse)[0]
  grad_values = _gather_impl(splat_lattice, back, cotangent_NC.shape[1])
  zero_ws = jax.tree.map(jnp.zeros_like, cotangents[1])
  return _float0_zeros(splat_lattice), _float0_zeros(slice_lattice), grad_values, zero_ws


_filter_ws.defvjp(_filter_ws_fwd, _filter_ws_bwd)


def filter_workspace(lattice: Lattice, channels: int, dtype=jnp.float32):
  """Two zero [capacity + 1, C'] tables for `weighted_filter` (C' as in `splat`)."""
  shape = (lattice.blur_n1_JM.shape[1], _padded_width(channels))
  return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def weighted_filter(splat_lattice: Lattice, slice_lattice: Lattice, values_NC, workspace,
                    reverse: bool = False):
  """slice_values(slice_lattice, blur(splat(splat_lattice, values))) computed in `workspace`
  (from `filter_workspace` or a previous call) -> (filtered [N, C], workspace to reuse).

  The two lattices share their points and blur neighbours and differ in their per-pixel
  weights (e.g. normalisations folded in)."""
  return _filter_ws(splat_lattice, slice_lattice, values_NC, workspace, reverse)
