/*
 * Bad input through DeePMD-kit's C API: every case must come back as a message from
 * DP_*CheckOK, leave the output arrays untouched, and leave the handle usable.
 *
 *   deeppot_errors MODEL
 *
 * MODEL is a two-type model (O, H) with a cutoff above 2 A, no fparam/aparam.
 * Exit status 0 when every case behaves, 1 otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "deepmd/c_api.h"

static int failures = 0;

/* Expect an error mentioning `needle`. */
static void expect_error(const char* what, const char* err, const char* needle) {
  if (err[0] == '\0') {
    printf("FAIL %-28s no error reported\n", what);
    failures++;
  } else if (needle && !strstr(err, needle)) {
    printf("FAIL %-28s error does not mention '%s': %s\n", what, needle, err);
    failures++;
  } else {
    printf("ok   %-28s %s\n", what, err);
  }
  DP_DeleteChar(err);
}

static void expect_ok(const char* what, const char* err) {
  if (err[0] != '\0') {
    printf("FAIL %-28s %s\n", what, err);
    failures++;
  } else {
    printf("ok   %-28s no error\n", what);
  }
  DP_DeleteChar(err);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL\n", argv[0]);
    return 2;
  }
  /* Loading. */
  DP_DeepPot* missing = DP_NewDeepPot("/nonexistent/model.pb");
  expect_error("missing model file", DP_DeepPotCheckOK(missing), "nonexistent");
  double e = 123.0;
  double coord1[6] = {0, 0, 0, 1, 0, 0};
  int atype1[2] = {0, 1};
  DP_DeepPotCompute2(missing, 1, 2, coord1, atype1, NULL, NULL, NULL, &e, NULL, NULL, NULL,
                     NULL);
  expect_error("compute on a failed load", DP_DeepPotCheckOK(missing), "no model");
  DP_DeleteDeepPot(missing);

  DP_DeepPot* null_path = DP_NewDeepPot(NULL);
  expect_error("null model path", DP_DeepPotCheckOK(null_path), "null");
  DP_DeleteDeepPot(null_path);

  const char* garbage = "this is not a model";
  DP_DeepPot* bad = DP_NewDeepPotWithParam2("model.pth", 0, garbage, (int)strlen(garbage));
  expect_error("garbage file content", DP_DeepPotCheckOK(bad), NULL);
  DP_DeleteDeepPot(bad);

  expect_error("null handle", DP_DeepPotCheckOK(NULL), "null");

  int size = 0;
  const char* content = DP_ReadFileToChar2("/nonexistent/file", &size);
  if (size >= 0) {
    printf("FAIL %-28s size %d for a missing file\n", "ReadFileToChar2", size);
    failures++;
  } else {
    printf("ok   %-28s size %d: %s\n", "ReadFileToChar2", size, content);
  }
  DP_DeleteChar(content);

  /* Computing. */
  DP_DeepPot* dp = DP_NewDeepPot(argv[1]);
  expect_ok("load", DP_DeepPotCheckOK(dp));
  double coord[9] = {0.0, 0.0, 0.0, 0.96, 0.0, 0.0, -0.24, 0.93, 0.0};
  int atype[3] = {0, 1, 1};
  double force[9], virial[9];
  for (int i = 0; i < 9; ++i) force[i] = -7.0;

  DP_DeepPotCompute2(dp, 1, 3, NULL, atype, NULL, NULL, NULL, &e, force, virial, NULL, NULL);
  expect_error("null coordinates", DP_DeepPotCheckOK(dp), "coord");
  DP_DeepPotCompute2(dp, 1, 3, coord, NULL, NULL, NULL, NULL, &e, force, virial, NULL, NULL);
  expect_error("null types", DP_DeepPotCheckOK(dp), "atype");
  DP_DeepPotCompute2(dp, 1, -3, coord, atype, NULL, NULL, NULL, &e, force, virial, NULL, NULL);
  expect_error("negative atom count", DP_DeepPotCheckOK(dp), "natoms");
  DP_DeepPotCompute2(dp, 0, 3, coord, atype, NULL, NULL, NULL, &e, force, virial, NULL, NULL);
  expect_error("zero frames", DP_DeepPotCheckOK(dp), "nframes");
  DP_DeepPotCompute2(dp, 1, 0, coord, atype, NULL, NULL, NULL, &e, force, virial, NULL, NULL);
  expect_error("empty system", DP_DeepPotCheckOK(dp), "empty");
  int bad_type[3] = {0, 1, 7};
  DP_DeepPotCompute2(dp, 1, 3, coord, bad_type, NULL, NULL, NULL, &e, force, virial, NULL,
                     NULL);
  expect_error("out-of-range type", DP_DeepPotCheckOK(dp), "type");
  double nan_coord[9];
  memcpy(nan_coord, coord, sizeof coord);
  nan_coord[4] = NAN;
  DP_DeepPotCompute2(dp, 1, 3, nan_coord, atype, NULL, NULL, NULL, &e, force, virial, NULL,
                     NULL);
  expect_error("NaN coordinate", DP_DeepPotCheckOK(dp), "NaN");
  double overlap[9];
  memcpy(overlap, coord, sizeof coord);
  memcpy(overlap + 3, coord, 3 * sizeof(double));
  DP_DeepPotCompute2(dp, 1, 3, overlap, atype, NULL, NULL, NULL, &e, force, virial, NULL,
                     NULL);
  expect_error("overlapping atoms", DP_DeepPotCheckOK(dp), "overlap");
  double singular[9] = {1, 0, 0, 2, 0, 0, 0, 0, 1};
  DP_DeepPotCompute2(dp, 1, 3, coord, atype, singular, NULL, NULL, &e, force, virial, NULL,
                     NULL);
  expect_error("singular cell", DP_DeepPotCheckOK(dp), "cell");
  if (e != 123.0 || force[0] != -7.0) {
    printf("FAIL %-28s a failed call wrote its outputs\n", "outputs untouched");
    failures++;
  }

  /* The neighbour-list path. */
  int ilist[3] = {0, 1, 2}, numneigh[3] = {2, 2, 2};
  int n0[2] = {1, 2}, n1[2] = {0, 2}, n2[2] = {0, 9};
  int* firstneigh[3] = {n0, n1, n2};
  DP_Nlist* nl = DP_NewNlist(3, ilist, numneigh, firstneigh);
  expect_ok("DP_NewNlist", DP_NlistCheckOK(nl));
  DP_DeepPotComputeNList2(dp, 1, 3, coord, atype, NULL, 0, nl, 0, NULL, NULL, &e, force,
                          virial, NULL, NULL);
  expect_error("neighbour index out of range", DP_DeepPotCheckOK(dp), "outside");
  DP_DeepPotComputeNList2(dp, 1, 3, coord, atype, NULL, 5, nl, 0, NULL, NULL, &e, force,
                          virial, NULL, NULL);
  expect_error("nghost > natoms", DP_DeepPotCheckOK(dp), "nghost");
  DP_DeepPotComputeNList2(dp, 1, 3, coord, atype, NULL, 0, NULL, 0, NULL, NULL, &e, force,
                          virial, NULL, NULL);
  expect_error("null neighbour list", DP_DeepPotCheckOK(dp), "null");
  DP_DeleteNlist(nl);
  DP_Nlist* broken = DP_NewNlist(3, NULL, NULL, NULL);
  expect_error("null nlist arrays", DP_NlistCheckOK(broken), "null");
  DP_DeleteNlist(broken);

  /* Still usable after all that. */
  n2[1] = 1;
  nl = DP_NewNlist(3, ilist, numneigh, firstneigh);
  DP_DeepPotComputeNList2(dp, 1, 3, coord, atype, NULL, 0, nl, 0, NULL, NULL, &e, force,
                          virial, NULL, NULL);
  expect_ok("valid call afterwards", DP_DeepPotCheckOK(dp));
  double e2;
  DP_DeepPotCompute2(dp, 1, 3, coord, atype, NULL, NULL, NULL, &e2, NULL, NULL, NULL, NULL);
  expect_ok("Compute2 afterwards", DP_DeepPotCheckOK(dp));
  if (fabs(e - e2) > 1e-10) {
    printf("FAIL %-28s NList2 energy %.15g, Compute2 %.15g\n", "paths agree", e, e2);
    failures++;
  }
  DP_DeleteNlist(nl);

  /* Model deviation takes one frame. */
  const char* models[1] = {argv[1]};
  DP_DeepPotModelDevi* devi = DP_NewDeepPotModelDevi(models, 1);
  double es[2];
  DP_DeepPotModelDeviCompute2(devi, 2, 3, coord, atype, NULL, NULL, NULL, es, NULL, NULL, NULL,
                              NULL);
  expect_error("model deviation, 2 frames", DP_DeepPotModelDeviCheckOK(devi), "one frame");
  DP_DeleteDeepPotModelDevi(devi);
  const char* missing_models[2] = {argv[1], "/nonexistent.pth"};
  devi = DP_NewDeepPotModelDevi(missing_models, 2);
  expect_error("model deviation, missing", DP_DeepPotModelDeviCheckOK(devi), "model 1");
  DP_DeleteDeepPotModelDevi(devi);

  DP_DeleteDeepPot(dp);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
