"""The Model protocol, the PAIR callback wrapper and the central output checks."""

from __future__ import annotations

import numpy as np
import pytest
import saliency.core as pair

from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
    SHAPE_ERROR_MESSAGE,
    CallbackModel,
    Model,
    as_model,
    check_outputs,
)

PAIR_KEYS = [
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
]


def test_keys_and_error_texts_are_pairs():
    for key in PAIR_KEYS:
        assert getattr(pair, key) == key
        assert SHAPE_ERROR_MESSAGE[key] == pair.SHAPE_ERROR_MESSAGE[key]


def test_analytic_model_follows_the_protocol(analytic):
    assert isinstance(analytic, Model)
    assert as_model(analytic) is analytic


def test_as_model_rejects_non_callables():
    with pytest.raises(TypeError, match="model must be a salience Model.*got int"):
        as_model(3)


def _pair_error(key, outputs, input_shape):
    """The message PAIR's own check gives for the same bad output."""
    with pytest.raises(ValueError) as info:
        pair.CoreSaliency().format_and_check_call_model_output(
            dict(outputs), input_shape, [key]
        )
    return str(info.value)


@pytest.mark.parametrize(
    "key, bad",
    [
        (INPUT_OUTPUT_GRADIENTS, np.zeros((2, 4, 4, 3))),
        (INPUT_OUTPUT_GRADIENTS, np.zeros((3, 4, 4, 1))),
        (OUTPUT_LAYER_VALUES, np.zeros(2)),
        (CONVOLUTION_LAYER_VALUES, np.zeros((4, 2, 2, 5))),
        (CONVOLUTION_OUTPUT_GRADIENTS, np.zeros((1, 2, 2, 5))),
    ],
)
def test_wrong_shape_gives_pairs_message(key, bad):
    shape = (3, 4, 4, 3)
    with pytest.raises(ValueError) as info:
        check_outputs({key: bad}, shape, [key])
    assert str(info.value) == _pair_error(key, {key: bad}, shape)
    assert key in str(info.value)


def test_missing_key_names_the_key_and_what_was_returned():
    with pytest.raises(ValueError, match="no key 'INPUT_OUTPUT_GRADIENTS'.*OUTPUT_LAYER_VALUES"):
        check_outputs({OUTPUT_LAYER_VALUES: np.zeros(3)}, (3, 2), [INPUT_OUTPUT_GRADIENTS])


def test_output_that_is_not_a_dict_is_a_type_error():
    with pytest.raises(TypeError, match="dict of outputs, got ndarray"):
        check_outputs(np.zeros((3, 2)), (3, 2), [INPUT_OUTPUT_GRADIENTS])


def test_check_outputs_converts_lists_and_keeps_only_requested_keys():
    out = check_outputs(
        {INPUT_OUTPUT_GRADIENTS: [[1.0, 2.0], [3.0, 4.0]], "extra": 1},
        (2, 2),
        [INPUT_OUTPUT_GRADIENTS],
    )
    assert list(out) == [INPUT_OUTPUT_GRADIENTS]
    assert isinstance(out[INPUT_OUTPUT_GRADIENTS], np.ndarray)
    np.testing.assert_array_equal(out[INPUT_OUTPUT_GRADIENTS], [[1, 2], [3, 4]])


def test_output_values_become_one_score_per_row():
    out = check_outputs({OUTPUT_LAYER_VALUES: np.arange(3.0)[:, None]}, (3, 5), [OUTPUT_LAYER_VALUES])
    np.testing.assert_array_equal(out[OUTPUT_LAYER_VALUES], [0, 1, 2])
    with pytest.raises(ValueError, match=r"one score per row.*\(3, 4\)"):
        check_outputs({OUTPUT_LAYER_VALUES: np.zeros((3, 4))}, (3, 5), [OUTPUT_LAYER_VALUES])


def test_scalar_output_is_rejected_with_pairs_message():
    with pytest.raises(ValueError, match="expected 3, actual None"):
        check_outputs({OUTPUT_LAYER_VALUES: 1.0}, (3, 5), [OUTPUT_LAYER_VALUES])


def test_callback_model_passes_args_and_keys_and_ignores_targets():
    seen = []

    def call_model_function(x_value_batch, call_model_args=None, expected_keys=None):
        seen.append((x_value_batch.shape, call_model_args, expected_keys))
        return {INPUT_OUTPUT_GRADIENTS: np.ones_like(x_value_batch)}

    model = CallbackModel(call_model_function, {"class_idx_str": 7})
    assert model.channels_last
    out = model(np.zeros((2, 3)), np.array([1, 2]), (INPUT_OUTPUT_GRADIENTS,))
    assert seen == [((2, 3), {"class_idx_str": 7}, [INPUT_OUTPUT_GRADIENTS])]
    np.testing.assert_array_equal(out[INPUT_OUTPUT_GRADIENTS], np.ones((2, 3)))


def test_callback_model_needs_a_callable():
    with pytest.raises(TypeError, match="call_model_function must be callable, got str"):
        CallbackModel("not a function")


def test_an_unwrapped_torch_module_is_named_with_the_fix():
    import torch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(TypeError, match=r"got a torch model \(Sequential\).*salience\.torch\.wrap"):
        as_model(net)
    import salience

    with pytest.raises(TypeError, match=r"salience\.torch\.wrap"):
        salience.Gradients().explain(net, np.zeros((1, 3, 2, 2)), 0)


def test_adapters_are_accepted_as_models():
    import torch

    import salience.torch as st

    model = st.wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))
    assert as_model(model) is model


def test_a_models_calls_of_one_run_hold_every_call_of_a_method_run(analytic, images):
    # A model may set up once for all the calls of a method run (the torch adapter:
    # eval mode and frozen parameters); every call falls inside that context.
    import contextlib

    import salience

    events = []

    class Counted:
        def __init__(self, inner):
            self.inner, self.depth = inner, 0

        @contextlib.contextmanager
        def calls_of_one_run(self):
            events.append("enter")
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
                events.append("exit")

        def __call__(self, x, targets, keys):
            events.append("call" if self.depth else "call outside the run")
            return self.inner(x, targets, keys)

    model = Counted(analytic)
    maps = salience.IntegratedGradients(steps=6, batch_size=4).explain(model, images, 0)
    assert events[0] == "enter" and events[-1] == "exit"
    assert events.count("enter") == 1 and events[1:-1] == ["call"] * (len(events) - 2)
    assert len(events) - 2 == -(-len(images) * 6 // 4)  # one call per chunk of 4 rows
    np.testing.assert_allclose(
        maps, salience.IntegratedGradients(steps=6, batch_size=4).explain(analytic, images, 0))
