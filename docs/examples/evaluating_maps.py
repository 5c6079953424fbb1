# %% [markdown]
# # Evaluating maps
#
# A map is only useful if it is faithful to the model. This page scores maps of the bundled
# EfficientNet-Lite0 in four ways: insertion and deletion (RISE), PIC (the SIC and AIC curves
# of the XRAI paper, as PAIR's `saliency.metrics`), the model-randomisation sanity check, and
# agreement with a mask an expert drew. About 40 s on a 2-core CPU.

# %%
import matplotlib.pyplot as plt
import numpy as np
import skimage.data

import salience
import salience.torch
from salience import metrics
from salience.zoo.efficientnet_lite import load_pretrained_efficientnet_lite0, preprocess_lite0

net = load_pretrained_efficientnet_lite0()
model = salience.torch.wrap(net, layer="_head_activation")
photos = [skimage.data.chelsea(), skimage.data.coffee()]
x, images = salience.io.load_input(photos, preset="efficientnet-lite")
targets = model.predict(x).argmax(axis=1)           # explain what the model sees
maps = {
    "Integrated Gradients": salience.IntegratedGradients(steps=16).explain(model, x, targets),
    "SmoothGrad": salience.SmoothGrad(salience.Gradients(), nsamples=8, seed=0).explain(
        model, x, targets),
    "Grad-CAM": salience.GradCAM().explain(model, x, targets),
}
print("targets:", targets)

# %% [markdown]
# ## Insertion and deletion
#
# Deletion blanks the most salient pixels first and follows the class probability: a faithful
# map makes it fall fast (lower area under the curve is better). Insertion reveals them on a
# blurred image: the probability should rise fast (higher is better). Maps are compared as
# magnitudes, one value per pixel.

# %%
curves = {}
for name, m in maps.items():
    pixel_map = np.abs(m).sum(axis=1) if m.ndim == 4 else m
    ins, dele = metrics.insertion_deletion_curves(model, x, pixel_map, targets, steps=16)
    curves[f"{name} insertion"], curves[f"{name} deletion"] = ins, dele
    print(f"{name:22s} insertion AUC {ins.auc.mean():.2f}   deletion AUC {dele.auc.mean():.2f}")
metrics.plot_curves(curves, title="Insertion (rising) and deletion (falling)", show_images=False);

# %% [markdown]
# `score="output"` follows the raw output (here a logit) instead of the probability.
#
# ## PIC: SIC and AIC
#
# `compute_pic_metric` has the arguments and numbers of PAIR's `saliency.metrics.pic` (and
# batches the model calls). It reveals growing shares of the most salient pixels on a blurred
# image and plots the model's softmax probability (SIC) or whether the class is still on
# top (AIC) against how much information the revealed image holds (as a share of the
# original's).

# %%
random_mask = metrics.generate_random_mask(224, 224, fraction=0.01,
                                           rng=np.random.default_rng(0))
thresholds = [0.005, 0.02, 0.05, 0.1, 0.21, 0.5, 0.75]
sic = {}
for name in ["Integrated Gradients", "Grad-CAM"]:
    m = maps[name][0]
    pixel_map = np.abs(m).sum(axis=0) if m.ndim == 3 else m
    pred = metrics.pred_func_from_model(model, int(targets[0]), "sic", preprocess=preprocess_lite0)
    # The cat's probability is spread over several cat classes (0.38 for the top one):
    # lower PAIR's default threshold for skipping unconfident images, 0.8.
    sic[name] = metrics.compute_pic_metric(images[0], pixel_map, random_mask, pred, thresholds,
                                           min_pred_value=0.3)
    print(f"{name:22s} SIC AUC {sic[name].auc:.2f} (higher is better)")
metrics.plot_curves(sic, title="SIC, first photo");

# %% [markdown]
# ## Everything the report shows, per image
#
# `evaluate_maps` is what `salience explain --metrics` runs: insertion/deletion AUC and
# SIC/AIC for every method and image. `metrics.METRICS` names each value and which way is
# better.

# %%
table = metrics.evaluate_maps(model, x[:1], images[:1], {"Grad-CAM": maps["Grad-CAM"][:1]},
                              targets[:1], preprocess_lite0, steps=8)
for key, value in table[0]["Grad-CAM"].items():
    info = metrics.METRICS[key]
    shown = "n/a" if value is None else f"{value:.2f}"
    print(f"{info.label:28s} {shown:>6s}  ({info.better} is better)")

# %% [markdown]
# ## Sanity check: model randomisation
#
# A map that does not change when the model's learnt weights are replaced by random ones
# explains the image, not the model (Adebayo et al., 2018). `model_randomisation` works on a
# copy of the network, re-initialising layers from the output down, and compares each map
# with the trained model's (rank correlation and SSIM; lower means the map depends on the
# weights). Three layers here; by default every layer with weights.

# %%
sanity = metrics.model_randomisation(net, salience.Gradients(), x[:1], targets[:1],
                                     layers=["_blocks.15._project_conv", "_conv_head", "_fc"])
for row in sanity.as_rows():
    print(row)
metrics.plot_sanity(sanity);

# %% [markdown]
# ## Agreement with an expert's mask
#
# When someone has marked what matters (a radiologist's outline, an embryologist's inner cell
# mass), `agreement_table` says whether each map's peak falls inside the mask (pointing game),
# how much of its positive mass does (energy), and how well its top 10% overlaps it (top-k
# IoU). Here the "expert" marked the cat's eyes and nose on the first photo.

# %%
expert = np.zeros((1, 224, 224), bool)
expert[0, 60:115, 25:215] = True     # eyes
expert[0, 150:200, 95:160] = True    # nose
for name, m in maps.items():
    pixel_map = np.abs(m[:1]).sum(axis=1) if m.ndim == 4 else m[:1]
    row = metrics.agreement_table(pixel_map, expert, k=0.1)[0]
    print(f"{name:22s} pointing {row['pointing_hit']!s:5s}  energy {row['energy']:.2f}  "
          f"top-10% IoU {row['top_k_iou']:.2f}  (mask {row['mask_fraction']:.0%} of the image)")

v = salience.visualize
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
axes[0].imshow(images[0])
axes[0].contour(expert[0], levels=[0.5], colors="lime")
axes[0].set_title("expert mask")
for ax, (name, m) in zip(axes[1:], maps.items()):
    ax.imshow(v.overlay(images[0], m[0]))
    ax.set_title(name)
for ax in axes:
    ax.axis("off")
plt.tight_layout()
