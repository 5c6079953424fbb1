# %% [markdown]
# # Migrating from PAIR `saliency`
#
# Code written for PAIR's [`saliency`](https://github.com/PAIR-code/saliency) library runs
# with one changed import, gives the same numbers, and works on numpy 2. This page takes a
# PAIR-style notebook (a PyTorch model and a hand-written `call_model_function`), switches it
# to salience, then shows the batch-first API the facade runs on, and PAIR's TF1 API.

# %%
import numpy as np
import skimage.data
import torch

from salience.zoo.efficientnet_lite import load_pretrained_efficientnet_lite0, preprocess_lite0

net = load_pretrained_efficientnet_lite0().eval()
photo = skimage.transform.resize(skimage.data.chelsea(), (224, 224), preserve_range=True)
image = preprocess_lite0(photo[None].astype(np.uint8), channels_last=True)[0]  # (224, 224, 3)

# %% [markdown]
# ## The PAIR notebook, unchanged except for the import
#
# Before: `import saliency.core as saliency`. After:

# %%
import salience.core as saliency

class_idx_str = "class_idx_str"


def call_model_function(images, call_model_args=None, expected_keys=None):
    """PAIR's callback, as in its PyTorch example: (n, H, W, C) in, gradients out."""
    x = torch.tensor(np.asarray(images).transpose(0, 3, 1, 2), dtype=torch.float32,
                     requires_grad=True)
    target = call_model_args[class_idx_str]
    scores = net(x)[:, target]
    grads = torch.autograd.grad(scores.sum(), x)[0]
    return {saliency.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).numpy()}


args = {class_idx_str: 285}  # Egyptian cat
gradients = saliency.GradientSaliency()
ig = saliency.IntegratedGradients()
vanilla_mask = gradients.GetMask(image, call_model_function, args)
ig_mask = ig.GetMask(image, call_model_function, args, x_steps=20, batch_size=20)
smooth_mask = gradients.GetSmoothedMask(image, call_model_function, args, nsamples=10)
print(vanilla_mask.shape, ig_mask.shape, smooth_mask.shape)

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
pictures = [photo.astype(np.uint8), saliency.VisualizeImageGrayscale(vanilla_mask),
            saliency.VisualizeImageGrayscale(smooth_mask), saliency.VisualizeImageGrayscale(ig_mask)]
for ax, picture, title in zip(axes, pictures, ["photo", "Gradients", "SmoothGrad", "IG"]):
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1 if picture.dtype != np.uint8 else 255)
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()

# %% [markdown]
# Same numbers as `saliency==0.2.1`: the facade calls `call_model_function` with the same rows,
# in the same order, with the same keys, and PAIR's own test suite passes against it. Where
# PAIR fails, salience does not: Guided IG on numpy 2, Blur IG's step weights with
# `sqrt=True`, NaN from the visualisers on a constant map.
#
# You do not need to write the callback: every adapter hands one out.

# %%
import salience
import salience.torch

model = salience.torch.wrap(net, layer="_head_activation")
callback = model.call_model_function(channels_last_input=True)
same = ig.GetMask(image, callback, args, x_steps=20, batch_size=20)
print("largest difference from the hand-written callback:", float(np.abs(same - ig_mask).max()))

# %% [markdown]
# ## The batch-first API underneath
#
# PAIR explains one image per call; salience's methods take a batch in the model's own layout
# and pack every row of the call (images × steps × samples) into model calls of `batch_size`
# rows. The same Integrated Gradients on the same image:

# %%
x = np.moveaxis(image, -1, 0)[None]   # (1, 3, 224, 224): the model's layout
batch_ig = salience.IntegratedGradients(steps=20, batch_size=20).explain(model, x, targets=285)
print("largest difference from the PAIR facade:",
      float(np.abs(np.moveaxis(batch_ig[0], 0, -1) - ig_mask).max()))

# %% [markdown]
# | PAIR `saliency.core` | salience |
# |---|---|
# | `GradientSaliency().GetMask(img, cmf, args)` | `salience.Gradients().explain(model, x, targets)` |
# | `GetSmoothedMask(..., nsamples=, stdev_spread=, magnitude=)` | `salience.SmoothGrad(method, nsamples=, stdev_spread=, magnitude=, seed=)` |
# | `IntegratedGradients().GetMask(..., x_steps=, x_baseline=)` | `salience.IntegratedGradients(steps=, baseline=)` |
# | `BlurIG`, `GuidedIG`, `XRAI`, `Occlusion`, `GradCam` | `salience.BlurIG`, `GuidedIG`, `XRAI`, `Occlusion`, `GradCAM` |
# | `call_model_args={"class_idx_str": k}` | `targets=k` (an int, one per image, weight rows, or None for the top class) |
# | `np.random.seed(k)` before `GetSmoothedMask` | `seed=k` (the facade still follows `np.random`) |
# | `VisualizeImageGrayscale`, `VisualizeImageDiverging` | `salience.visualize.overlay` (or the same two functions) |
#
# ## TF1 graphs
#
# `import salience.tf1 as saliency` replaces PAIR's `saliency.tf1` on `tf.compat.v1` graphs of
# current TensorFlow. Build the graph inside `with graph.as_default():`; eager execution stays
# on everywhere else. A tiny random graph stands in for yours:

# %%
import tensorflow as tf

import salience.tf1 as saliency_tf1

graph = tf.Graph()
with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, (None, 28, 28, 1))
    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 1, 4)), tf.float32)
    conv = tf.nn.relu(tf.nn.conv2d(images, kernel, strides=1, padding="SAME"))
    logits = tf.reduce_mean(conv, axis=(1, 2))
    y = logits[:, 2]                      # the score to explain, one per row
    sess = tf.compat.v1.Session(graph=graph)

digit = np.random.default_rng(1).random((28, 28, 1)).astype("float32")
tf1_ig = saliency_tf1.IntegratedGradients(graph, sess, y, images).GetMask(digit, feed_dict={},
                                                                          x_steps=10)
tf1_guided = saliency_tf1.GuidedBackprop(graph, sess, y, images).GetMask(digit)
print(tf1_ig.shape, tf1_guided.shape)

# %% [markdown]
# `GuidedBackprop` needs no graph copy or checkpoint (PAIR's does) and also guides `Relu6`.
# `salience.tf1.wrap(graph, sess, y, images)` gives a model for the batch-first API.
