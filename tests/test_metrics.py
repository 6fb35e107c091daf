import math

import pytest

from pace import metrics

# Hand-made 3-session matrix with unequal test sizes; every expected value is computed in the comments.
A = [[90.0], [95.0, 80.0], [60.0, 50.0, 40.0]]
SIZES = [10, 20, 30]


def test_accuracy_per_session_is_test_size_weighted():
    # A_1 = 90; A_2 = (95*10 + 80*20)/30 = 85; A_3 = (60*10 + 50*20 + 40*30)/60 = 2800/60
    assert metrics.accuracy_per_session(A, SIZES) == pytest.approx([90.0, 85.0, 2800 / 60])
    # unweighted: (95+80)/2, (60+50+40)/3
    assert metrics.accuracy_per_session(A) == pytest.approx([90.0, 87.5, 50.0])


def test_last_and_average_incremental_accuracy():
    assert metrics.last_accuracy(A, SIZES) == pytest.approx(2800 / 60)
    assert metrics.average_incremental_accuracy(A, SIZES) == pytest.approx((90 + 85 + 2800 / 60) / 3)


def test_forgetting_is_max_based_over_earlier_evaluations():
    # session 1: max(90, 95) - 60 = 35; session 2: 80 - 50 = 30 -> 32.5
    assert metrics.forgetting(A) == pytest.approx(32.5)
    # after session 2 only: 90 - 95 = -5 (a gain counts negative); after session 1: 0
    assert metrics.forgetting_curve(A) == pytest.approx([0.0, -5.0, 32.5])


def test_bwt_plasticity_stability():
    assert metrics.bwt(A) == pytest.approx(((60 - 90) + (50 - 80)) / 2)
    assert metrics.plasticity(A) == pytest.approx((90 + 80 + 40) / 3)
    # old-class accuracy: after 2: 95; after 3: (60*10 + 50*20)/30 = 160/3
    old = metrics.old_accuracy_per_session(A, SIZES)
    assert math.isnan(old[0]) and old[1:] == pytest.approx([95.0, 160 / 3])
    assert metrics.stability(A, SIZES) == pytest.approx((95 + 160 / 3) / 2)


def test_first_and_new_task_decompose_last_accuracy():
    first, new = metrics.first_and_new_task_accuracy(A, SIZES)
    assert first == 60.0
    assert new == pytest.approx((50 * 20 + 40 * 30) / 50)  # 44
    # the paper's Fig. 3 identity: A_T = share_1 * first + (1 - share_1) * new
    assert (10 * first + 50 * new) / 60 == pytest.approx(metrics.last_accuracy(A, SIZES))


def test_single_session():
    s = metrics.summary([[70.0]], [5])
    assert s["last_accuracy"] == 70.0 and s["forgetting"] == 0.0 and s["bwt"] == 0.0
    assert s["stability"] == 70.0 and math.isnan(s["new_task_accuracy"])


def test_perfect_retention_gives_zero_forgetting():
    a = [[80.0], [80.0, 70.0], [80.0, 70.0, 60.0]]
    assert metrics.forgetting(a) == 0.0 and metrics.bwt(a) == 0.0


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [[1.0], [None, 2.0]]])
def test_malformed_matrix_is_an_error(bad):
    with pytest.raises(ValueError):
        metrics.summary(bad)


def test_bad_sizes_are_an_error():
    with pytest.raises(ValueError, match="sizes"):
        metrics.accuracy_per_session(A, [10, 0, 30])
