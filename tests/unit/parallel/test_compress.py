"""The 16-bit gradient encodings (mpidl.parallel.compress): bf16 rounding and specials, bf16
against PyTorch, and the encoded sum rounded once."""

import numpy as np
import pytest

from mpidl.parallel.compress import add_encoded, bf16_decode, bf16_encode, fp16_decode, fp16_encode


def test_bf16_rounds_to_nearest_even_and_keeps_specials():
    one_plus = lambda k: np.float32(1 + k * 2.0 ** -8)  # noqa: E731 - bf16 spacing at 1 is 2**-7
    x = np.array([one_plus(1), one_plus(3), one_plus(1.5), -one_plus(1), np.inf, -np.inf, np.nan, 0.0,
                  3.0e38], dtype=np.float32)
    y = bf16_decode(bf16_encode(x))
    np.testing.assert_array_equal(y[:4], [1.0, 1 + 2.0 ** -6, 1 + 2.0 ** -7, -1.0])  # ties go to even
    assert y[4] == np.inf and y[5] == -np.inf and np.isnan(y[6]) and y[7] == 0
    assert abs(y[8] - 3.0e38) / 3.0e38 < 2.0 ** -8  # float32's range, unlike fp16


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=20000) * np.exp(rng.uniform(-30, 30, size=20000))).astype(np.float32)
    ours = bf16_decode(bf16_encode(x))
    theirs = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("codec,encode,decode", [("fp16", fp16_encode, fp16_decode),
                                                 ("bf16", bf16_encode, bf16_decode)])
def test_add_encoded_is_the_float32_sum_rounded_once(codec, encode, decode):
    rng = np.random.default_rng(1)
    a, b = encode(rng.normal(size=1000)), encode(rng.normal(size=1000))
    expected = decode(encode(decode(a) + decode(b)))
    add_encoded(codec, a, b)
    np.testing.assert_array_equal(decode(b), expected)
