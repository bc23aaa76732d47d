"""Operations shared by several methods (``anomaly_vlm.methods.ops``)."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from anomaly_vlm.methods.ops import gaussian_blur


@pytest.mark.parametrize(("shape", "sigma"), [((2, 40, 40), 4.0), ((1, 10, 12), 4.0), ((1, 37, 29), 1.5)])
def test_gaussian_blur_equals_scipy_gaussian_filter(shape, sigma) -> None:
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    ours = gaussian_blur(maps.double(), sigma).numpy()
    expected = np.stack([gaussian_filter(image, sigma=sigma) for image in maps.double().numpy()])
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12)
    assert gaussian_blur(maps, 0.0) is maps
