"""The workflows of the bundle: the code behind train.json, inference.json and evaluate.json."""
