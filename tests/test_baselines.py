"""minicap.baselines: the most frequent training caption, and the nearest training image's consensus caption."""

from __future__ import annotations

import numpy as np
import pytest

from minicap.baselines import (
    MOST_FREQUENT,
    NEAREST_NEIGHBOUR,
    baseline_captions,
    most_frequent_caption_baseline,
    nearest_neighbour_baseline,
)
from minicap.coco import CocoCaptions
from minicap.dataset import FeatureTable, MissingFeaturesError
from minicap.metrics import CiderD
from minicap.text import tokenize


def test_most_frequent_caption_baseline_normalises_and_breaks_ties_alphabetically():
    captions = ["A dog.", "b", "a dog", "B!", "a cat", "   "]
    # "a dog" and "b" both occur twice after tokenizing; the tie goes to the alphabetically first
    assert most_frequent_caption_baseline(captions) == "a dog"
    assert most_frequent_caption_baseline(reversed(captions)) == "a dog"
    assert most_frequent_caption_baseline(["A man's hat", "a man’s hat", "a hat"]) == "a man 's hat"
    with pytest.raises(ValueError, match="no non-empty"):
        most_frequent_caption_baseline(["", "..."])


def _toy_nn_data():
    train_ids = np.array([30, 10, 20])
    # image 10 along axis 0, image 20 along axis 1, image 30 along axis 2 (rows given in id order 30, 10, 20)
    train_features = np.array([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.1], [0.0, 1.0, 0.0, 0.1]])
    train_refs = {
        10: ["a cat on a sofa", "a cat sleeping on a sofa", "a kitten"],
        20: [
            "a red bus on a street",
            "a giraffe eating leaves",
            "a red bus parked on the street",
            "a red double decker bus on the street",
        ],
        30: ["a plate of food"],
    }
    return train_features, train_ids, train_refs


def test_nearest_neighbour_baseline_picks_the_consensus_caption_of_the_most_similar_image():
    train_features, train_ids, train_refs = _toy_nn_data()
    # Test image 1 points along axis 1 but is 50x longer than image 20: cosine (not Euclidean) finds image 20.
    # Test image 2 is nearest to image 30, which has one caption: that caption is returned as is.
    test_features = np.array([[0.2, 50.0, 0.0, 0.0], [0.1, 0.0, 0.9, 0.0], [3.0, 0.2, 0.0, 0.0]])
    out = nearest_neighbour_baseline(train_features, train_ids, train_refs, test_features, [1, 2, 3])
    # Image 20: the giraffe caption agrees with no other caption (CIDEr-D 0); of the bus captions, the one
    # sharing most n-grams with the other two wins (2.29 vs 2.01 and 1.99).
    assert out[1] == "a red bus parked on the street"
    assert out[2] == "a plate of food"
    # Image 10: the two cat captions tie (each is the other's only match); the alphabetically first wins,
    # never the outlier "a kitten".
    assert out[3] == "a cat on a sofa"
    # Shuffling the training rows changes nothing.
    perm = np.array([2, 0, 1])
    again = nearest_neighbour_baseline(train_features[perm], train_ids[perm], train_refs, test_features, [1, 2, 3])
    assert again == out


def test_nearest_neighbour_consensus_choice_is_the_argmax_of_cider_d():
    train_features, train_ids, train_refs = _toy_nn_data()
    out = nearest_neighbour_baseline(train_features, train_ids, train_refs, np.array([[0.0, 1.0, 0.0, 0.0]]), [5])
    cider = CiderD([[tokenize(c) for c in refs] for refs in train_refs.values()])
    pool = [tokenize(c) for c in train_refs[20]]
    consensus = [cider.score(pool[c], pool[:c] + pool[c + 1 :]) for c in range(len(pool))]
    assert out[5] == train_refs[20][int(np.argmax(consensus))]
    assert sorted(consensus)[-1] > sorted(consensus)[-2]  # a strict winner: the test is not decided by ties


def test_nearest_neighbour_k_pools_captions_and_validates_inputs():
    train_features, train_ids, train_refs = _toy_nn_data()
    # Halfway between the cat image (10) and the food image (30): with k=2 both pools count.
    out = nearest_neighbour_baseline(train_features, train_ids, train_refs, np.array([[1.0, 0.0, 1.0, 0.0]]), [7], k=2)
    assert out[7] in train_refs[10] + train_refs[30]
    with pytest.raises(ValueError, match="also training images"):
        nearest_neighbour_baseline(train_features, train_ids, train_refs, train_features[:1], [30])
    with pytest.raises(ValueError, match=r"have no captions in train_refs \(first: \[30\]\)"):
        nearest_neighbour_baseline(train_features, train_ids, {10: ["a"], 20: ["b"]}, train_features[:1], [99])
    with pytest.raises(ValueError, match="feature sizes differ"):
        nearest_neighbour_baseline(train_features, train_ids, train_refs, np.zeros((1, 3)), [99])
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbour_baseline(train_features, train_ids, train_refs, np.zeros((1, 4)), [99], k=4)


# ----------------------------------------------------------------------------------------------- both, from a split


def _toy_coco() -> tuple[CocoCaptions, FeatureTable]:
    """The training images of `_toy_nn_data` (as COCO captions and a feature table) plus test images 1, 2, 3."""
    train_features, train_ids, train_refs = _toy_nn_data()
    test_ids = np.array([1, 2, 3])
    test_features = np.array([[0.2, 50.0, 0.0, 0.0], [0.1, 0.0, 0.9, 0.0], [3.0, 0.2, 0.0, 0.0]])
    captions = [(int(i), c) for i in train_ids for c in train_refs[int(i)]]
    captions += [(int(i), "a test caption nobody may see") for i in test_ids]
    ids = np.concatenate([train_ids, test_ids])
    images = {int(i): {"id": int(i), "file_name": f"{i}.jpg"} for i in ids}
    return CocoCaptions(images, captions), FeatureTable(ids, np.concatenate([train_features, test_features]))


def test_baseline_captions_of_a_split_see_only_the_training_images():
    coco, table = _toy_coco()
    train_features, train_ids, train_refs = _toy_nn_data()
    test_features = table.lookup([3, 1, 2])
    out = baseline_captions(coco, table, [20, 30, 10], [3, 1, 2], nn_k=1)
    assert list(out) == [MOST_FREQUENT, NEAREST_NEIGHBOUR]
    # The most frequent TRAINING caption for every test image (the test captions, 3 equal ones, never count).
    frequent = most_frequent_caption_baseline(c for refs in train_refs.values() for c in refs)
    assert out[MOST_FREQUENT] == {1: frequent, 2: frequent, 3: frequent}
    assert frequent != "a test caption nobody may see"
    assert out[NEAREST_NEIGHBOUR] == nearest_neighbour_baseline(
        train_features, train_ids, train_refs, test_features, [3, 1, 2]
    )
    assert out[NEAREST_NEIGHBOUR] == {1: "a red bus parked on the street", 2: "a plate of food", 3: "a cat on a sofa"}


def test_baseline_captions_caps_k_at_the_training_images_and_needs_features():
    coco, table = _toy_coco()
    out = baseline_captions(coco, table, [10, 20, 30], [1], nn_k=5)  # 5 neighbours wanted, 3 training images
    pooled = [c for i in (10, 20, 30) for c in coco.references()[i]]
    assert out[NEAREST_NEIGHBOUR][1] in pooled
    partial = FeatureTable(table.image_ids[:3], table.features[:3])  # the test images have no features
    with pytest.raises(MissingFeaturesError, match="1 of 1 requested image ids have no features"):
        baseline_captions(coco, partial, [10, 20, 30], [1])
