"""Research tools: LaMP data, training, evaluation, the oracle and the benchmark."""
