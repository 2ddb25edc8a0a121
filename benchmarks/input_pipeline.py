"""Images per second of ImageNet's input pipeline alone (decode, random-resized crop or resize
and centre crop, flip, batch), on generated JPEGs of ImageNet's typical size.

  python -m benchmarks.input_pipeline [--images 1024] [--size 500x375] [--batch 64]
                                      [--threads 1,2,8] [--workers 0,2] [--out results.json]

Each row decodes the same files (written once, JPEG quality 90, about ImageNet's mean file size)
through :func:`darts_jax.data.imagenet.local_batches`, the loader the training runs, and counts
images per second over the whole pass, start-up of threads and processes included (the loader
reads two batches ahead, so a rate after the first batch would count those as free).
Colour jitter and normalisation are not here: they run on the device inside the step. Rows run
one after another in one process, so they share the machine's state (compare them side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def write_jpegs(root: str, n: int, size: tuple[int, int], classes: int = 8) -> None:
  """``n`` smooth random JPEGs (quality 90) in ``classes`` class folders of ``root/train``."""
  from PIL import Image
  rng = np.random.default_rng(0)
  width, height = size
  for i in range(n):
    folder = os.path.join(root, 'train', f'n{i % classes:08d}')
    os.makedirs(folder, exist_ok=True)
    # low-frequency content compresses like a photograph, not like noise
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    noise = rng.integers(-12, 13, (height, width, 3))
    pixels = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f'{i:06d}.JPEG'), quality=90)


def measure(root: str, train: bool, threads: int, workers: int, batch: int,
            image_size: int = 224) -> dict:
  from darts_jax.data import imagenet
  data = imagenet.load_streaming(root, 'train', image_size=image_size, resize_size=256,
                                 workers=workers, threads=threads)._replace(train=train)
  n = data.num_examples // batch * batch
  order = np.arange(n).reshape(-1, batch)
  t0 = time.perf_counter()
  iterator = imagenet.local_batches(data, order, slice(0, batch), seed=0, epoch=0)
  count = len(next(iterator)[1])
  t1 = time.perf_counter()
  count += sum(len(labels) for _, labels in iterator)
  seconds = time.perf_counter() - t0
  del iterator  # stops grain's worker processes
  return {'view': 'train' if train else 'eval', 'threads': threads, 'workers': workers,
          'batch': batch, 'first_batch_s': round(t1 - t0, 3),
          'images_per_s': round(count / seconds, 1), 'images': count}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=1024)
  parser.add_argument('--size', default='500x375', help='WIDTHxHEIGHT of the generated JPEGs')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--threads', default='1,2,8')
  parser.add_argument('--workers', default='0,2')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--out', default='')
  args = parser.parse_args(argv)
  size = tuple(int(v) for v in args.size.split('x'))
  rows = []
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, args.images, size)
    mean_kb = np.mean([os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
                       for f in files]) / 1024
    print(f'{args.images} JPEGs of {size[0]}x{size[1]} ({mean_kb:.0f} KB each), batch '
          f'{args.batch}, {os.cpu_count()} CPUs')
    print(f'{"view":6} {"threads":>7} {"workers":>7} {"first batch s":>13} {"images/s":>9}')
    for train in (True, False):
      for workers in (int(w) for w in args.workers.split(',')):
        for threads in (int(t) for t in args.threads.split(',')):
          row = measure(root, train, threads, workers, args.batch, args.image_size)
          row.update(jpeg_kb=round(mean_kb, 1), size=args.size, cpus=os.cpu_count())
          rows.append(row)
          print(f'{row["view"]:6} {threads:7d} {workers:7d} {row["first_batch_s"]:13.2f} '
                f'{row["images_per_s"]:9.1f}', flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
