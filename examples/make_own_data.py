"""Write the 8x8 digits shipped with mpidl in every format --dataset reads, into FOLDER
(default my_data/), for the README's "Your own data" examples:

    python examples/make_own_data.py my_data

    my_data/digits.npz          x_train, y_train, x_test, y_test (numpy.savez: memory-mapped in place)
    my_data/digits_npy/         x.npy, y.npy (no split: use --val-fraction)
    my_data/digits.csv          64 pixel columns and a 'digit' column of names (zero ... nine)
    my_data/digits.h5           pixels/all, labels/all (h5py)
    my_data/digits_images/      train/<name>/*.png and val/<name>/*.png (Pillow)
"""

import os
import sys

import numpy as np

from mpidl.data import load_dataset

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main(folder="my_data"):
    digits = load_dataset("digits")
    x, y = np.asarray(digits.x_train), np.asarray(digits.y_train)        # (1437, 1, 8, 8) grey levels 0..16
    xv, yv = np.asarray(digits.x_val), np.asarray(digits.y_val)
    os.makedirs(os.path.join(folder, "digits_npy"), exist_ok=True)
    np.savez(os.path.join(folder, "digits.npz"), x_train=x, y_train=y, x_test=xv, y_test=yv)
    every_x, every_y = np.concatenate([x, xv]).reshape(-1, 64), np.concatenate([y, yv])
    np.save(os.path.join(folder, "digits_npy", "x.npy"), every_x.astype(np.float32))
    np.save(os.path.join(folder, "digits_npy", "y.npy"), every_y)
    with open(os.path.join(folder, "digits.csv"), "w") as f:
        f.write(",".join(f"pixel{i}" for i in range(64)) + ",digit\n")
        for row, label in zip(every_x, every_y):
            f.write(",".join(str(int(v)) for v in row) + f",{NAMES[label]}\n")
    try:
        import h5py
        with h5py.File(os.path.join(folder, "digits.h5"), "w") as h:
            h["pixels/all"] = every_x.astype(np.float32)
            h["labels/all"] = every_y
    except ImportError:
        print("skipped digits.h5: pip install 'mpidl[hdf5]'")
    try:
        from PIL import Image
        for split, images, labels in (("train", x, y), ("val", xv, yv)):
            for i, (image, label) in enumerate(zip(images, labels)):
                out = os.path.join(folder, "digits_images", split, NAMES[label])
                os.makedirs(out, exist_ok=True)
                Image.fromarray((image[0] * 255 // 16).astype(np.uint8)).save(os.path.join(out, f"{i:04d}.png"))
    except ImportError:
        print("skipped digits_images/: pip install 'mpidl[images]'")
    print(f"wrote {folder}/: digits.npz, digits_npy/, digits.csv, digits.h5, digits_images/")


if __name__ == "__main__":
    main(*sys.argv[1:])
