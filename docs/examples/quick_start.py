# %% [markdown]
# # Quick start with a photo
#
# Explain the bundled EfficientNet-Lite0 (pretrained on ImageNet, weights inside the package)
# on a photo of a cat and draw the maps over it. A few seconds on a 2-core CPU.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import skimage.data
import skimage.io

import salience
import salience.torch
from salience.zoo.efficientnet_lite import load_pretrained_efficientnet_lite0

photo_file = Path(tempfile.mkdtemp()) / "cat.jpg"
skimage.io.imsave(photo_file, skimage.data.chelsea())  # any photo file will do

# %% [markdown]
# Wrap the network once. `layer=` names the convolutional layer the CAM methods look at; the
# other methods need only the network.

# %%
model = salience.torch.wrap(load_pretrained_efficientnet_lite0(), layer="_head_activation")

# One line from a file to the model's input `x` (1, 3, 224, 224) and the picture `image`
# exactly as the model sees it (centre crop keeping the aspect ratio, uint8).
x, image = salience.io.load_input(photo_file, preset="efficientnet-lite", size=224)
scores = model.predict(x)
print("top class:", int(np.argmax(scores)), "of", scores.shape[1])

# %% [markdown]
# ## Three maps
#
# Integrated Gradients attributes the class score to each pixel (a signed map, one value per
# channel); Grad-CAM shows where the last convolutional layer's class evidence is, at that
# layer's 7x7 resolution; `overlay` resizes and colours any of them over the picture.

# %%
ig = salience.IntegratedGradients(steps=25).explain(model, x)   # (1, 3, 224, 224)
cam = salience.GradCAM().explain(model, x)                      # (1, 224, 224)
smooth = salience.SmoothGrad(salience.Gradients(), nsamples=10, seed=0).explain(model, x)

v = salience.visualize
panels = {
    "photo": image,
    "Integrated Gradients (signed)": v.overlay(image, ig[0], absolute=False),
    "SmoothGrad": v.overlay(image, smooth[0]),
    "Grad-CAM": v.overlay(image, cam[0]),
}
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
for ax, (title, picture) in zip(axes, panels.items()):
    ax.imshow(picture)
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()

# %% [markdown]
# In the signed overlay red pixels raise the class score and blue ones lower it. To save
# pictures instead of plotting them: `v.save_png("maps.png", v.grid(list(panels.values())))`.
#
# ## Several methods by name
#
# `salience.explain` predicts and runs several methods in one call, by the names that
# `salience methods` lists; it also records time, model rows and calls per method.

# %%
result = salience.explain(model, x, ["gradients", "gradcam_plus_plus", "input_x_gradient"])
print(result.top(3))
for name, maps in result.maps.items():
    print(f"{name:18s} {maps.shape}  {result.seconds[name]:.2f} s  {result.rows[name]} rows")
