"""What the builder tests share (not a test module): preparing a tfds builder from a manual
directory and reading a split's examples by id."""

import tensorflow_datasets as tfds


def prepare(builder, manual_dir=None):
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def examples(builder, split) -> dict:
  """id -> example of every record of `split`."""
  source = builder.as_data_source(split)
  return {ex["id"].decode(): ex for ex in (source[i] for i in range(len(source)))}
