"""Quality metrics for generated samples.

    frechet.py      Fréchet distance between Gaussian summaries of two feature sets
                    (Heusel et al. 2017, eq. 6): gaussian_stats, frechet_distance
    classifier.py   a small CNN trained per labelled image dataset: its features for the
                    Fréchet distance ("FD-digits") and its accuracy on class-conditional samples
"""
