-- The strategies of SPEC section 3 with their defaults; existing rows are left as they are.
INSERT INTO crypto_strategies (name, strategy_type, default_parameters) VALUES
    ('RSI', 'rsi', '{"rsi_period": 14, "oversold_threshold": 30, "overbought_threshold": 70}'),
    ('MA Crossover', 'ma_crossover', '{"fast_period": 10, "slow_period": 30}'),
    ('Bollinger Bands', 'bollinger', '{"bb_period": 20, "bb_std": 2.0}'),
    ('MACD', 'macd', '{"fast_period": 12, "slow_period": 26, "signal_period": 9}'),
    ('Buy and Hold', 'buy_and_hold', '{}')
ON CONFLICT (name) DO NOTHING;
