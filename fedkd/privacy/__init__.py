"""Privacy instruments: distributed DP inside the secure sum (`mechanism`), its accounting
(`accounting`) and an attack-based audit of what the server learns (`audit`)."""
