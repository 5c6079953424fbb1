# %% [markdown]
# # Keras and JAX
#
# The adapters turn a framework's own model into a salience model; every method then works
# the same way. salience bundles EfficientNet-Lite0 in PyTorch, Keras and JAX with the same
# weights, so this page can show the three giving the same maps. Most of its time is
# TensorFlow and JAX starting and tracing (about 30 s on a 2-core CPU).

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter

import matplotlib.pyplot as plt
import numpy as np
import skimage.data

import salience
import salience.jax
import salience.keras
import salience.torch
from salience.zoo.efficientnet_lite import (
    efficientnet_lite0_jax,
    efficientnet_lite0_keras,
    load_pretrained_efficientnet_lite0,
)

# Keras and JAX models here take (n, H, W, C); PyTorch's takes (n, C, H, W).
x_nhwc, image = salience.io.load_input(skimage.data.chelsea(), preset="efficientnet-lite",
                                       channels_last=True)
x_nchw = np.ascontiguousarray(np.moveaxis(x_nhwc, -1, 1))

# %% [markdown]
# ## Keras
#
# `salience.keras.wrap(model, layer=...)` takes a Keras 3 (or `tf.keras`) model; the layer for
# the CAM methods is named as in `model.summary()`. The adapter traces one `tf.function` per
# kind of call, which any batch size reuses (`jit_compile=True` compiles it with XLA).

# %%
keras_model = salience.keras.wrap(efficientnet_lite0_keras(), layer="top_activation")
keras_grad = salience.Gradients().explain(keras_model, x_nhwc)       # (1, 224, 224, 3)
keras_cam = salience.GradCAM().explain(keras_model, x_nhwc)          # (1, 224, 224)
keras_guided = salience.GuidedBackprop().explain(keras_model, x_nhwc)
print(keras_grad.shape, keras_cam.shape, int(np.argmax(keras_model.predict(x_nhwc))))

# %% [markdown]
# ## JAX
#
# A JAX model is a pure function `fn(params, x)`. For the CAM methods, give it split in two:
# `layer_fn(params, x)` up to the layer and `head_fn(params, layer_values)` from there on.

# %%
lite = efficientnet_lite0_jax()
jax_model = salience.jax.wrap(lite.fn, lite.params, layer_fn=lite.features, head_fn=lite.head)
jax_grad = salience.Gradients().explain(jax_model, x_nhwc)
jax_cam = salience.GradCAM().explain(jax_model, x_nhwc)

# %% [markdown]
# ## The same maps from three frameworks

# %%
torch_model = salience.torch.wrap(load_pretrained_efficientnet_lite0(), layer="_head_activation")
torch_grad = np.moveaxis(salience.Gradients().explain(torch_model, x_nchw), 1, -1)
torch_cam = salience.GradCAM().explain(torch_model, x_nchw)

scale = np.abs(torch_grad).max()
for name, grad, cam in [("Keras", keras_grad, keras_cam), ("JAX", jax_grad, jax_cam)]:
    print(f"{name}: gradients differ from PyTorch's by {np.abs(grad - torch_grad).max() / scale:.1e}"
          f" of their maximum, Grad-CAM by {np.abs(cam - torch_cam).max():.1e}")

v = salience.visualize
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
for ax, (title, picture) in zip(axes, {
        "Keras gradients": v.overlay(image, keras_grad[0]),
        "Keras Guided Backprop": v.overlay(image, keras_guided[0]),
        "JAX Grad-CAM": v.overlay(image, jax_cam[0]),
        "PyTorch Grad-CAM": v.overlay(image, torch_cam[0])}.items()):
    ax.imshow(picture)
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()

# %% [markdown]
# In float32 the ports agree closely but not exactly: the frameworks order their sums
# differently, and where an activation sits within float32 rounding of a ReLU6 kink the
# gradient takes the other branch there. In float64 (`net.double()`,
# `efficientnet_lite0_keras(dtype="float64")`) they agree to about 1e-15.
