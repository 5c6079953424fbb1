# %% [markdown]
# # Quick start with a photo
#
# Explain the pretrained EfficientNet-Lite0 on a photo of a cat, in a few seconds on a CPU.

# %%
import numpy as np
import skimage.data

import salience
import salience.torch
from salience.io import Preprocessing
from salience.zoo.efficientnet_lite import load_pretrained_efficientnet_lite0

net = load_pretrained_efficientnet_lite0()
model = salience.torch.wrap(net, layer="_head_activation")
prep = Preprocessing(size=(224, 224), preset="efficientnet-lite")
photo = prep.display(skimage.data.chelsea())
x = prep.model_input([photo])
print(int(np.argmax(model.predict(x))))

# %%
import matplotlib.pyplot as plt

cam = salience.GradCAM().explain(model, x)[0]
plt.imshow(salience.visualize.overlay(photo, cam))
plt.axis("off");
