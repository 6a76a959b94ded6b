"""The `deeplax` command: eval, predict, convert, export, crf-search.

    deeplax eval --checkpoint RUN [--config configs/x.py] [--split val] [--output-stride 8]
                 [--scales 0.5 0.75 1 1.25 1.5 1.75] [--flip] [--fusion mean|max]
                 [--tile 769] [--trimap 2 5 10] [--crf] [--json results.json]
    deeplax predict --checkpoint RUN --output DIR [--save-logits] [--scales ...] [--flip] [--crf]
                    IMAGE_OR_FOLDER ...
    deeplax convert torchvision FILE.pth|FILE.safetensors --arch deeplabv3_resnet101 --output RUN
    deeplax convert tf-slim CKPT_PREFIX --arch resnet_v1_101 --output RUN
    deeplax export --checkpoint RUN --format stablehlo|saved_model --output PATH [--size 513 513]
    deeplax crf-search ...   (deeplax.crf.search)

Errors in the input (files, checkpoints, configs, options) end the command with a one-paragraph
message and exit status 2; any other failure with its message and status 1. `--verbose` (before
or after the command name) adds the traceback.
"""

import argparse
import importlib.util
import json
import os
import sys
import traceback
from typing import List, Optional, Sequence

ERROR_EXIT = 2


class CLIError(Exception):
  """A usage error reported without a traceback."""


def load_config_file(spec: str):
  """A ConfigDict from `file.py` (get_config(), or get_config(arg) with `file.py:arg`) or `.json`."""
  import ml_collections
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found")
  if path.endswith(".json"):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  module_spec = importlib.util.spec_from_file_location("deeplax_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} defines no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def _tile_size(values: Optional[Sequence[int]]):
  if not values:
    return None
  if len(values) > 2:
    raise CLIError(f"--tile takes one size or HEIGHT WIDTH; got {values}")
  return (values[0], values[-1])


def _add_strategy_args(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("inference strategy (v3 §4.2, v2 §4.1)")
  g.add_argument("--output-stride", type=int, default=None,
                 help="evaluate at this output_stride (e.g. 8 for a model trained at 16)")
  g.add_argument("--scales", type=float, nargs="+", default=[1.0],
                 help="input scales, e.g. 0.5 0.75 1.0 1.25 1.5 1.75 (v3 §4.2)")
  g.add_argument("--flip", action="store_true", help="add left-right flipped inputs")
  g.add_argument("--fusion", choices=("mean", "max"), default="mean",
                 help="mean: average probabilities (v3); max: max score over scales (v2)")
  g.add_argument("--tile", type=int, nargs="+", default=None, metavar="SIZE",
                 help="sliding-window tile size (one value or HEIGHT WIDTH), e.g. 769")
  g.add_argument("--tile-overlap", type=float, default=1.0 / 3.0,
                 help="fraction of a tile shared with its neighbour (default 1/3)")
  g.add_argument("--window", choices=("uniform", "tent"), default="uniform",
                 help="blending weights of overlapping tiles")


def _add_crf_args(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("dense CRF (v2 §3.3)")
  g.add_argument("--crf", action="store_true", help="refine the labels with the dense CRF")
  g.add_argument("--crf-preset", default="deeplab_v2_resnet101_voc",
                 help="CRF parameters: a name of deeplax.crf.PRESETS")
  g.add_argument("--crf-iters", type=int, default=10, help="mean-field iterations")


def _strategy(args, model_config):
  from deeplax import inference
  return inference.strategy_for(model_config, scales=tuple(args.scales), flip=args.flip,
                                fusion=args.fusion, tile_size=_tile_size(args.tile),
                                tile_overlap=args.tile_overlap, window=args.window)


def _crf_options(args):
  if not args.crf:
    return None
  from deeplax import crf
  from deeplax.predict import CRFOptions
  if args.crf_preset not in crf.PRESETS:
    raise CLIError(f"unknown --crf-preset {args.crf_preset!r}; known: {', '.join(crf.PRESETS)}")
  if args.crf_iters < 1:
    raise CLIError(f"--crf-iters must be >= 1; got {args.crf_iters}")
  return CRFOptions(params=crf.PRESETS[args.crf_preset](), num_iters=args.crf_iters)


# --------------------------------------------------------------------------------------------

def cmd_eval(args) -> int:
  from deeplax import evaluate, inference
  config = load_config_file(args.config) if args.config else None
  config, variables = inference.load_model(args.checkpoint, args.step, config)
  results = evaluate.evaluate(config, variables, split=args.split,
                              strategy=_strategy(args, config.model),
                              output_stride=args.output_stride,
                              trimap_widths=args.trimap or (), crf=_crf_options(args),
                              max_batches=args.max_batches, progress=not args.quiet)
  print(evaluate.format_results(results))
  json_path = args.json or os.path.join(
      args.checkpoint, f"eval_{results['split'] or 'default'}.json")
  evaluate.write_json(results, json_path)
  print(f"wrote {json_path}")
  return 0


def cmd_predict(args) -> int:
  from deeplax import inference, predict
  config, variables = inference.load_model(args.checkpoint, args.step)
  paths = predict.collect_images(args.inputs)
  predictor = predict.Predictor(config, variables, _strategy(args, config.model),
                                output_stride=args.output_stride, crf=_crf_options(args))
  summary = predict.predict_files(predictor, paths, args.output, save_logits=args.save_logits,
                                  batch_size=args.batch_size, progress=not args.quiet)
  print(f"predicted {len(summary['predicted'])} of {len(paths)} images into {args.output}")
  if summary["failed"]:
    print(f"{len(summary['failed'])} failed:", file=sys.stderr)
    for path, reason in summary["failed"].items():
      print(f"  {reason}", file=sys.stderr)
    return 1
  return 0


def cmd_convert(args) -> int:
  if args.source == "torchvision":
    from deeplax.convert import torchvision
    torchvision.convert_file(args.file, args.arch, args.output, drop_aux=args.drop_aux)
  else:
    from deeplax.convert import tf_slim
    tf_slim.convert_checkpoint(args.file, args.arch, args.output)
  return 0


def cmd_export(args) -> int:
  from deeplax import export, inference
  config, variables = inference.load_model(args.checkpoint, args.step)
  if os.path.exists(args.output):
    raise CLIError(f"--output {args.output!r} already exists; choose a new path")
  export.export(config, variables, args.format, args.output, args.size,
                strategy=_strategy(args, config.model), output_stride=args.output_stride)
  print(f"wrote {args.format} to {args.output}")
  return 0


def cmd_crf_search(argv: List[str]) -> int:
  try:
    from deeplax.crf import search
  except ImportError as e:
    raise CLIError(f"crf-search is not available: deeplax.crf.search cannot be imported ({e})")
  result = search.main(argv)
  return int(result or 0)


def build_parser() -> argparse.ArgumentParser:
  from deeplax.convert import tf_slim, torchvision
  from deeplax import export
  parser = argparse.ArgumentParser(prog="deeplax", description=__doc__.split("\n")[0])
  parser.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  verbose = argparse.ArgumentParser(add_help=False)
  verbose.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="print tracebacks of errors")
  sub = parser.add_subparsers(dest="command", required=True)
  add_parser = sub.add_parser
  sub.add_parser = lambda *a, **k: add_parser(*a, parents=[verbose] if k.get("add_help", True) else [], **k)

  p = sub.add_parser("eval", help="mIoU / per-class IoU / trimap of a checkpoint on a split")
  p.add_argument("--checkpoint", required=True, help="run directory (config.json + checkpoints/)")
  p.add_argument("--config", default=None,
                 help="config file (.py with get_config(), or .json); default: the run's config.json")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--split", default=None, help="tfds split (default: config.data.eval_split)")
  p.add_argument("--trimap", type=float, nargs="+", default=None, metavar="WIDTH",
                 help="trimap band widths in pixels (v2 Fig. 10), e.g. 1 2 4 8 16")
  p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
  p.add_argument("--json", default=None,
                 help="results file (default: <checkpoint>/eval_<split>.json)")
  p.add_argument("--quiet", action="store_true")
  _add_strategy_args(p)
  _add_crf_args(p)
  p.set_defaults(func=cmd_eval)

  p = sub.add_parser("predict", help="segment image files or folders")
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--output", required=True, help="folder for <stem>.png, <stem>_overlay.png, ...")
  p.add_argument("--save-logits", action="store_true",
                 help="also write <stem>_logits.npy (float32 [H, W, num_classes])")
  p.add_argument("--batch-size", type=int, default=4, help="same-size images per device batch")
  p.add_argument("--quiet", action="store_true")
  p.add_argument("inputs", nargs="+", help="image files or folders")
  _add_strategy_args(p)
  _add_crf_args(p)
  p.set_defaults(func=cmd_predict)

  p = sub.add_parser("convert", help="import pretrained weights")
  csub = p.add_subparsers(dest="source", required=True)
  add_convert = csub.add_parser
  csub.add_parser = lambda *a, **k: add_convert(*a, parents=[verbose], **k)
  c = csub.add_parser("torchvision", help="torchvision DeepLabV3 / ImageNet ResNet weights")
  c.add_argument("file", help=".pth (needs torch) or .safetensors")
  c.add_argument("--arch", required=True, choices=torchvision.ARCHS)
  c.add_argument("--output", required=True, help="run directory to write")
  c.add_argument("--drop-aux", action="store_true", help="leave out the auxiliary FCN head")
  c.set_defaults(func=cmd_convert)
  c = csub.add_parser("tf-slim", help="TF-slim ResNet v1 ImageNet checkpoints")
  c.add_argument("file", help="checkpoint prefix, e.g. resnet_v1_101.ckpt")
  c.add_argument("--arch", required=True, choices=tuple(tf_slim.ARCHS))
  c.add_argument("--output", required=True, help="run directory to write")
  c.set_defaults(func=cmd_convert)

  p = sub.add_parser("export", help="serialise the inference function")
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--format", required=True, choices=export.FORMATS)
  p.add_argument("--output", required=True, help="file (stablehlo) or directory (saved_model)")
  p.add_argument("--size", type=int, nargs=2, default=[513, 513], metavar=("HEIGHT", "WIDTH"),
                 help="input height and width (the batch dimension stays symbolic)")
  _add_strategy_args(p)
  p.set_defaults(func=cmd_export)

  sub.add_parser("crf-search", help="grid search of CRF parameters (deeplax.crf.search)",
                 add_help=False)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:2] == ["--verbose", "crf-search"]:
    argv = argv[1:]
  if argv and argv[0] == "crf-search":
    try:
      return cmd_crf_search(argv[1:])
    except CLIError as e:
      print(f"deeplax crf-search: error: {e}", file=sys.stderr)
      return ERROR_EXIT
  parser = build_parser()
  args = parser.parse_args(argv)
  from deeplax.convert import ConversionError
  try:
    return int(args.func(args) or 0)
  except (CLIError, ConversionError, ValueError, FileNotFoundError, FileExistsError,
          NotADirectoryError, IsADirectoryError, PermissionError, ImportError) as e:
    if args.verbose:
      traceback.print_exc()
    print(f"deeplax {args.command}: error: {e}", file=sys.stderr)
    return ERROR_EXIT
  except Exception as e:  # pylint: disable=broad-except
    if args.verbose:
      traceback.print_exc()
    print(f"deeplax {args.command}: failed: {type(e).__name__}: {e}"
          + ("" if args.verbose else " (--verbose prints the traceback)"), file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
