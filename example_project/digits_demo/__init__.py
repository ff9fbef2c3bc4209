"""A small real project: a digit classifier trained on scikit-learn's bundled digits."""
