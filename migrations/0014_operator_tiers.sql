-- Plan (tier) names are the operator's own words ("Basic", "Team", "Scale"), read through the
-- DESKPILOT_TRIAL_TIERS / _FREE_TIERS / _TOP_TIERS settings; a customer without a known plan has none (NULL),
-- as every customer an inbound ticket creates.

ALTER TABLE customers DROP CONSTRAINT IF EXISTS customers_tier_check;
ALTER TABLE customers ALTER COLUMN tier DROP NOT NULL, ALTER COLUMN tier DROP DEFAULT;
ALTER TABLE customers ADD CONSTRAINT customers_tier_check CHECK (tier IS NULL OR length(tier) BETWEEN 1 AND 64);
