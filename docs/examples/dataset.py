# %% [markdown]
# # Explaining a whole dataset
#
# `salience.explain_dataset` (on the command line `salience explain-dataset`) explains every
# image of a folder or list file into a store: one Parquet record per image, the maps in
# Zarr, and an HTML summary. A run that stops continues where it was when started again. It
# runs in this process by default, or on Ray Data workers (`engine="ray"`). About 15 s here.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import skimage.data
import skimage.io

import salience
import salience.torch
from salience.zoo.efficientnet_lite import load_pretrained_efficientnet_lite0

work = Path(tempfile.mkdtemp())
photos = work / "photos"
photos.mkdir()
for name in ("chelsea", "coffee", "astronaut", "rocket"):
    skimage.io.imsave(photos / f"{name}.jpg", getattr(skimage.data, name)())

model = salience.torch.wrap(load_pretrained_efficientnet_lite0(), layer="_head_activation")

# %% [markdown]
# ## A run
#
# The images are read, resized and normalised as the command line does (the bundled model's
# preprocessing is used for it), explained in batches, and written as they finish.

# %%
store = work / "run-1"
summary = salience.explain_dataset(photos, model, ["gradients", "gradcam"], store)
print(summary)

# %% [markdown]
# Started again on the same store, the run skips every image it already has: a run stopped
# by a crash, a pre-empted machine or Ctrl-C finishes the rest.

# %%
again = salience.explain_dataset(photos, model, ["gradients", "gradcam"], store)
print(f"done {again.done}, skipped {again.skipped}, in the store {again.total}")

# %% [markdown]
# ## Reading the results
#
# `open_results` reads the store: the records as a pyarrow Table (one row per image) and
# any map on demand, without loading the others.

# %%
results = salience.open_results(store)
print(results.records.column_names)
for row in results.records.select(["name", "status", "top_classes", "gradcam.seconds"]).to_pylist():
    print(row)

v = salience.visualize
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
for ax, row in zip(axes, results.records.select(["id", "path", "name"]).to_pylist()):
    image = salience.io.load_input(row["path"], preset="efficientnet-lite")[1]
    ax.imshow(v.overlay(image, results.map(row["id"], "gradcam")))
    ax.set_title(row["name"])
    ax.axis("off")
plt.tight_layout()

# %% [markdown]
# The store also holds `index.html`, a summary to open in a browser: the run's settings, times
# and a sample of images with their maps. `salience explain-dataset --help` lists every
# option: list files with per-image targets, `--metrics`, float16 maps, Ray workers and GPUs.
