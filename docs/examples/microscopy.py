# %% [markdown]
# # Grayscale microscopy end to end
#
# A single-channel model, maps and metrics, as for embryologists grading blastocyst images.
# The images here are synthetic so the page runs anywhere in seconds: a blastocyst-like
# ring of cells, and in "good" embryos an inner cell mass (ICM), a bright clump on the inside
# of the ring. Both classes carry bright debris, so a model must find the ICM itself. The ICM's
# outline is what an expert would mark: the maps should point there.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import salience
import salience.torch
from salience import metrics

SIZE = 64


def embryo(rng, good):
    """One uint8 (64, 64) image and the expert mask of its ICM (empty when there is none)."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(float)
    cy, cx = SIZE / 2 + rng.normal(0, 2, 2)
    r = np.hypot(yy - cy, xx - cx)
    radius = rng.uniform(20, 25)
    picture = 0.25 + 0.35 * np.exp(-((r - radius) / 1.8) ** 2)          # trophectoderm ring
    picture += 0.05 * np.sin(xx / 3 + rng.uniform(0, 6)) * (r < radius)  # blastocoel texture
    mask = np.zeros((SIZE, SIZE), bool)
    if good:
        angle = rng.uniform(0, 2 * np.pi)
        iy, ix = cy + 0.6 * radius * np.sin(angle), cx + 0.6 * radius * np.cos(angle)
        icm = np.exp(-(((yy - iy) ** 2 + (xx - ix) ** 2) / (2 * 4.0**2)))
        picture += 0.45 * icm
        mask = icm > 0.3
    for _ in range(3):                                                   # debris, both classes
        dy, dx = rng.uniform(4, SIZE - 4, 2)
        picture += 0.5 * np.exp(-(((yy - dy) ** 2 + (xx - dx) ** 2) / 2.0))
    picture += rng.normal(0, 0.04, picture.shape)
    return (np.clip(picture, 0, 1) * 255).astype(np.uint8), mask


rng = np.random.default_rng(0)
labels = rng.integers(0, 2, 400)
images, masks = zip(*(embryo(rng, good) for good in labels))
images, masks = np.stack(images), np.stack(masks)

fig, axes = plt.subplots(1, 6, figsize=(14, 2.6))
for ax, picture, good in zip(axes, images, labels):
    ax.imshow(picture, cmap="gray")
    ax.set_title("good (ICM)" if good else "no ICM")
    ax.axis("off")

# %% [markdown]
# ## Input and model
#
# `salience.io.load_input` turns the uint8 gray images into the model's input the same way
# the `salience explain` command would (`channels=1`, values scaled to [0, 1] by the `unit`
# preset). A small CNN learns the task in a few seconds on a CPU.

# %%
x, _ = salience.io.load_input(list(images), preset="unit", size=SIZE, channels=1)
print(x.shape, x.dtype)   # (400, 1, 64, 64) float32

torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
    nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, 2),    # is there an ICM anywhere?
)
train, test = slice(0, 320), slice(320, 400)
inputs, targets = torch.from_numpy(x[train]), torch.from_numpy(labels[train])
optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
for epoch in range(10):
    for batch in torch.randperm(320).split(32):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(inputs[batch]), targets[batch]).backward()
        optimiser.step()
net.eval()
with torch.no_grad():
    accuracy = (net(torch.from_numpy(x[test])).argmax(1).numpy() == labels[test]).mean()
print(f"test accuracy: {accuracy:.2f}")

# %% [markdown]
# ## Maps of the good embryos
#
# Wrap the trained network; `layer="6"` is the last convolution's ReLU (the name in
# `net.named_modules()`), the layer Grad-CAM looks at. Explain the test images that have an
# ICM, for the "good" class (1).

# %%
model = salience.torch.wrap(net, layer="6")
good = np.flatnonzero(labels[test] == 1)[:8] + test.start
maps = {
    "Gradients": salience.Gradients().explain(model, x[good], targets=1),
    "Integrated Gradients": salience.IntegratedGradients(steps=32).explain(model, x[good], targets=1),
    "SmoothGrad": salience.SmoothGrad(salience.Gradients(), nsamples=16, seed=0).explain(
        model, x[good], targets=1),
    "Grad-CAM": salience.GradCAM().explain(model, x[good], targets=1),
}

v = salience.visualize
fig, axes = plt.subplots(3, 5, figsize=(12, 7.5))
for row, k in enumerate(range(3)):
    axes[row, 0].imshow(images[good[k]], cmap="gray")
    axes[row, 0].contour(masks[good[k]], levels=[0.5], colors="lime", linewidths=1)
    for col, (name, m) in enumerate(maps.items(), 1):
        axes[row, col].imshow(v.overlay(images[good[k]], m[k]))
        axes[row, 0].set_title("expert mask" if row == 0 else "")
        axes[row, col].set_title(name if row == 0 else "")
for ax in axes.flat:
    ax.axis("off")
plt.tight_layout()

# %% [markdown]
# ## Do the maps point at the ICM?
#
# `agreement_table` compares each map with the expert mask: whether its maximum falls in the
# mask (pointing game), the share of its positive mass inside (energy), and the overlap of
# its top 10% pixels with the mask (top-k IoU). Pixel maps of one channel are passed
# channels first here, as the model takes them.

# %%
for name, m in maps.items():
    table = metrics.agreement_table(np.abs(m) if m.ndim == 4 else m, masks[good], k=0.1,
                                    channels_last=False)
    hits = np.mean([row["pointing_hit"] for row in table])
    energy = np.mean([row["energy"] for row in table])
    iou = np.mean([row["top_k_iou"] for row in table])
    print(f"{name:22s} pointing game {hits:.2f}   energy in mask {energy:.2f}   "
          f"top-10% IoU {iou:.2f}   (mask: {table[0]['mask_fraction']:.1%} of the image)")

# %% [markdown]
# ## Faithfulness and a sanity check
#
# Deletion removes the most salient pixels first: the class probability should fall fast
# (lower area is better). Insertion adds them to a blurred image: it should rise fast (higher
# is better). The model-randomisation check re-initialises the layers from the top: a map that
# still looks the same after that does not depend on what the model learnt.

# %%
ins, dele = metrics.insertion_deletion_curves(model, x[good], maps["Integrated Gradients"],
                                              targets=1, steps=32)
print(f"IG insertion AUC {ins.auc.mean():.2f} (higher is better), "
      f"deletion AUC {dele.auc.mean():.2f} (lower is better)")
metrics.plot_curves({"insertion": ins, "deletion": dele}, title="Integrated Gradients")

sanity = metrics.model_randomisation(net, salience.Gradients(), x[good], targets=1)
for row in sanity.as_rows():
    print(row)
metrics.plot_sanity(sanity);
