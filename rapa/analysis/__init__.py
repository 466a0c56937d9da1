"""The paper's analyses of trained nets (Rasch et al. 2019, sections 3.1-3.5): similarity of
the replicas across tiles (Fig. 6), reduction of a tiled net to one kernel (Table 3), FGSM
robustness (Fig. 7), and the results table (Tables 1 and 2)."""
