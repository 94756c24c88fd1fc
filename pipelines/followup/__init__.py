"""Follow-up screening: a current scan read against its prior.

Register the prior scan to the current one (:mod:`.register`), match nodules one-to-one (:mod:`.match`),
measure their change (:mod:`.growth`), apply the prior-dependent Lung-RADS v2022 rules (:mod:`.lungrads_prior`)
and write the comparison of two case folders (:mod:`.compare`). Follow-up pairs with known truth for testing
and validation come from :mod:`.pairs` (:mod:`.pair_truth`). Coordinates are LPS world mm throughout.
"""
