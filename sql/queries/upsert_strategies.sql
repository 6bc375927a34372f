-- One row per registered strategy (pipeline/strategies): its name, type and default parameters.
-- Written by `cryptobt db init` for SQL users; the CLI reads strategies from their files, never from here.
INSERT INTO crypto_strategies (name, strategy_type, default_parameters)
SELECT name, name, defaults::jsonb
FROM unnest(%(names)s::text[], %(defaults)s::text[]) AS s(name, defaults)
ON CONFLICT (name) DO UPDATE SET strategy_type = EXCLUDED.strategy_type,
                                 default_parameters = EXCLUDED.default_parameters;
