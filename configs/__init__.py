"""Where and how a campaign runs: Parsl sites, validated run settings, and the names shared by all parts."""
