/* MKL's vendor check, answered "Intel" (see bench/mkl_on_amd.sh).
 *
 * torch's MKL asks these functions whether the CPU is an Intel one before it picks its
 * kernels; on other CPUs it falls back to generic ones, AVX-512 or not. Preloaded with
 * LD_PRELOAD, this library answers first, and MKL then chooses by the CPU's feature flags
 * alone. */
int mkl_serv_intel_cpu_true(void) { return 1; }
int mkl_serv_intel_cpu(void) { return 1; }
