// flashlane/flashlane.h: the whole public C++ API.
#pragma once

#include "flashlane/dispatch.h"
#include "flashlane/kvcache.h"
#include "flashlane/problem.h"
#include "flashlane/receipt.h"
#include "flashlane/serving.h"
#include "flashlane/status.h"
#include "flashlane/tensor.h"
#include "flashlane/version.h"
