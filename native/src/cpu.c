/* What this CPU can run, asked of the CPU itself (cpuid and xgetbv on x86: the OS must also save the wider registers)
 * or of the OS (getauxval on Linux, sysctl on macOS, for ARM). Nothing here chooses: kernels/registry.c picks the
 * kernel from these answers. */
#include "trit_internal.h"

#ifdef TRIT_X86
#include <cpuid.h>

static uint32_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}

static int os_saves_avx(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return 0; /* OSXSAVE */
    return (xgetbv0() & 0x6) == 0x6;                                   /* XMM and YMM state */
}

int trit_cpu_has_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(fma && avx && f16c) || !os_saves_avx()) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 5) & 1;
}

int trit_cpu_has_avx512vnni(void) {
    unsigned a, b, c, d;
    if (!trit_cpu_has_avx2() || (xgetbv0() & 0xe6) != 0xe6) return 0; /* opmask and ZMM state saved too */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int f = (b >> 16) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vbmi = (c >> 1) & 1, vnni = (c >> 11) & 1;
    return f && bw && vl && vbmi && vnni; /* VBMI for the byte permutes that decode T5 */
}

int trit_cpu_has_avxvnni(void) {
    unsigned a, b, c, d;
    if (!trit_cpu_has_avx2() || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a >> 4) & 1; /* AVX-VNNI: its YMM state is AVX2's, checked above */
}
#else
int trit_cpu_has_avx2(void) { return 0; }
int trit_cpu_has_avx512vnni(void) { return 0; }
int trit_cpu_has_avxvnni(void) { return 0; }
#endif

/* The NEON kernel needs SDOT (FEAT_DotProd) and is compiled with FP16 allowed (FEAT_FP16). */
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1UL << 10)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
int trit_cpu_has_neon_dotprod(void) {
    unsigned long hw = getauxval(AT_HWCAP);
    return (hw & HWCAP_ASIMDDP) && (hw & HWCAP_ASIMDHP);
}
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
/* 1 or 0 as the OS reports the feature; -1 if this macOS predates the hw.optional.arm.FEAT_* names (before 12). */
static int sysctl_feature(const char *name) {
    int value = 0;
    size_t len = sizeof value;
    return sysctlbyname(name, &value, &len, NULL, 0) == 0 ? value != 0 : -1;
}
int trit_cpu_has_neon_dotprod(void) {
    /* Every Apple Silicon Mac (M1 on) has both; older macOS versions just cannot say so. */
    return sysctl_feature("hw.optional.arm.FEAT_DotProd") != 0 && sysctl_feature("hw.optional.arm.FEAT_FP16") != 0;
}
#else
int trit_cpu_has_neon_dotprod(void) { return 0; }
#endif
