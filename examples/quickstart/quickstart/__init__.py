"""flsplit quickstart: split learning with helper nodes on scikit-learn's digits."""
