"""Dynamical versus Bayesian: the k-gon phases of the posterior as N grows, beside SGD's.

Chen, Lau, Mendel, Wei and Murfet (2023) ask which k-gon critical points SGD passes in
training, and which k-gon phase dominates the Bayesian posterior as the number of samples N
grows. `devtms bayes` answers the second half and lines it up with the first:

    theory.py        the exact population loss of single-feature ReLU TMS; regular k-gon
                     critical points by label; the parameter-count learning coefficient
    phases.py        the phases a run's SGD reaches (plateaus of geometry.csv) and their LLC
    free_energy.py   F_N = N L + lambda log N: the predicted dominant phase and crossovers N*
    posterior.py     replica-exchange SGLD at n_beta = N, batched over rungs x chains
    occupancy.py     the sampled occupancy, whether chains from different starts agree, and
                     the three journeys (predicted, sampled, SGD) side by side
    stage.py         the stage: reads the run, samples each N (resumable), writes bayes/
"""
