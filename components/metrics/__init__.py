"""Quality metrics for generative models, pure PyTorch + NumPy (pipelines/evaluate.py runs them).

    frechet.py            Fréchet distance between Gaussian summaries of two feature sets
                          (Heusel et al. 2017, eq. 6): gaussian_stats, frechet_distance
    kid.py                kernel distance: unbiased MMD^2, cubic polynomial kernel (Bińkowski et al. 2018)
    precision_recall.py   k-NN manifold precision and recall (Kynkäänniemi et al. 2019)
    likelihood.py         bits/dim on 8-bit images: dequantization, exact / bound / estimate
    disentanglement.py    MIG (Chen et al. 2018) and the β-VAE metric (Higgins et al. 2017)
    classifier.py         a small CNN trained per labelled image dataset: its features for the
                          Fréchet distance ("FD-digits") and its accuracy on conditional samples
    inception.py          Inception-v3 pool features for standard FID, from a user-supplied
                          pytorch-fid weights file (never downloaded)
"""
