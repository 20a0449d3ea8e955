"""``sc-loadtest``: drive a SuperChat server (this one or upstream) with many sessions and measure it."""
