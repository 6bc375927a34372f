-- An UPDATE that changes a price bumps updated_at; one that rewrites identical
-- values does not, so re-importing a file never makes the next export re-read it.
CREATE OR REPLACE FUNCTION crypto_prices_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.open_price, NEW.high_price, NEW.low_price, NEW.close_price, NEW.volume)
       IS DISTINCT FROM
       (OLD.open_price, OLD.high_price, OLD.low_price, OLD.close_price, OLD.volume) THEN
        NEW.updated_at := clock_timestamp();
    ELSE
        NEW.updated_at := OLD.updated_at;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS trg_crypto_prices_updated_at ON crypto_prices;
CREATE TRIGGER trg_crypto_prices_updated_at
    BEFORE UPDATE ON crypto_prices
    FOR EACH ROW EXECUTE FUNCTION crypto_prices_touch_updated_at();
