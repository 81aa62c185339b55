-- Orthanc: forward each dermoscopy instance to the monai-cir DICOM node once, never its own answers.
--
-- Install: copy this file next to orthanc.json, list it in "LuaScripts", and declare the service
-- in "DicomModalities" under the name TARGET, e.g. "monaicir": ["MONAICIR", "10.0.0.7", 11112].
-- "StableAge" (seconds without a new instance) decides when a study is complete.
--
-- When a study becomes stable and one of its series has Modality DMS (dermoscopy) or XC (older
-- archives' VL photographs), and it is not a case of the similar-cases library (its Study
-- Description starts with LIBRARY_PREFIX, as `monai-cir dicomize` writes it), the script sends the
-- service, in one asynchronous store job, the study's instances that
--   * are of a SOP class the service takes (the dermoscopy image classes and the SR classes),
--   * are not an answer of the service: anything stored by the service's AE title (RemoteAET, set
--     by C-STORE only), or an SR with the DICOM attributes the service writes into its similar-cases
--     SR (IsAnswerSR), which hold whichever way the answer came back, C-STORE or STOW-RS (the
--     answer's Encapsulated PDF is of a class the service does not take), and
--   * were not sent to it before: each instance sent is marked with the Orthanc metadata MARK
--     ('forwarded'; an answer is marked 'answer'). The service keeps a study's earlier instances, so
--     an image added later to an answered study is answered with the study's earlier SR text.
-- A store job to the service that fails (the service down) clears the marks of its instances
-- (OnJobFailure), so they go with the study's next forward.
--
-- MARK is a user-defined metadata index (1024-65535): Orthanc accepts it with no configuration. If
-- your orthanc.json declares "UserMetadata" with the same index for something else, pick another.

local TARGET = 'monaicir'      -- the DicomModalities entry of the service
local SERVICE_AET = 'MONAICIR' -- the AE title the service stores its answers with
local LIBRARY_PREFIX = 'monai-cir case'
local MARK = '4711'            -- the metadata that says an instance was sent to the service (or is its answer)

-- what the service writes into its answers (monai_cir/dicom/codes.py, monai_cir/dicom/sr.py)
local MANUFACTURER = 'monai-cir'
local MODEL_NAME = 'monai-cir composed retrieval'
local ANSWER_TITLE = '126000'  -- DCM "Imaging Measurement Report": the document title of its similar-cases SR

-- the SOP classes the service takes (monai_cir.service.SUPPORTED_SOP_CLASSES)
local IMAGE_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.77.1.7'] = true, -- Dermoscopic Photography Image
  ['1.2.840.10008.5.1.4.1.1.77.1.4'] = true, -- VL Photographic Image
}
local SR_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.88.11'] = true,  -- Basic Text SR
  ['1.2.840.10008.5.1.4.1.1.88.22'] = true,  -- Enhanced SR
  ['1.2.840.10008.5.1.4.1.1.88.33'] = true,  -- Comprehensive SR
  ['1.2.840.10008.5.1.4.1.1.88.34'] = true,  -- Comprehensive 3D SR
}

local function IsDermoscopy(studyId)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in pairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality == 'DMS' or modality == 'XC' then
      return true
    end
  end
  return false
end

-- An SR of the service: its Manufacturer, Model Name and document title (Concept Name Code Sequence).
local function IsAnswerSR(instanceId)
  local tags = ParseJson(RestApiGet('/instances/' .. instanceId .. '/simplified-tags'))
  if tags['Manufacturer'] ~= MANUFACTURER or tags['ManufacturerModelName'] ~= MODEL_NAME then
    return false
  end
  local title = tags['ConceptNameCodeSequence']
  return type(title) == 'table' and type(title[1]) == 'table' and title[1]['CodeValue'] == ANSWER_TITLE
end

-- 'forward', 'answer' or nil (neither: a SOP class the service does not take, or already sent)
local function Triage(instanceId)
  local metadata = ParseJson(RestApiGet('/instances/' .. instanceId .. '/metadata?expand'))
  if metadata[MARK] ~= nil then
    return nil
  end
  local sopClass = metadata['SopClassUid'] or ''
  if metadata['RemoteAET'] == SERVICE_AET or (SR_CLASSES[sopClass] and IsAnswerSR(instanceId)) then
    return 'answer'
  end
  if IMAGE_CLASSES[sopClass] or SR_CLASSES[sopClass] then
    return 'forward'
  end
  return nil
end

function OnStableStudy(studyId, tags, metadata)
  local description = tags['StudyDescription'] or ''
  if string.sub(description, 1, string.len(LIBRARY_PREFIX)) == LIBRARY_PREFIX then
    return
  end
  if not IsDermoscopy(studyId) then
    return
  end
  local instances = ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))
  local send = {}
  for _, instance in pairs(instances) do
    local id = instance['ID']
    local what = Triage(id)
    if what == 'answer' then
      RestApiPut('/instances/' .. id .. '/metadata/' .. MARK, 'answer')
    elseif what == 'forward' then
      table.insert(send, id)
    end
  end
  if #send == 0 then
    return
  end
  for _, id in ipairs(send) do -- before the job starts: a forward that overlaps it does not send them twice
    RestApiPut('/instances/' .. id .. '/metadata/' .. MARK, 'forwarded')
  end
  local ok, job = pcall(RestApiPost, '/modalities/' .. TARGET .. '/store', DumpJson({ Resources = send, Asynchronous = true }, true))
  if not ok or job == nil then
    -- no job was made (TARGET not in DicomModalities, Orthanc refused): no OnJobFailure will unmark them
    for _, id in ipairs(send) do
      pcall(RestApiDelete, '/instances/' .. id .. '/metadata/' .. MARK)
    end
    print('monai-cir: could not forward study ' .. studyId .. ' to ' .. TARGET .. ' (is "' .. TARGET ..
          '" in DicomModalities?): ' .. tostring(job) .. '; its ' .. #send .. ' instance(s) go with the study\'s next forward')
    return
  end
  print('monai-cir: forwarding ' .. #send .. ' instance(s) of study ' .. studyId .. ' to ' .. TARGET)
end

-- A store job to the service failed: its instances are sent again with the study's next forward.
function OnJobFailure(jobId)
  local ok, job = pcall(function() return ParseJson(RestApiGet('/jobs/' .. jobId)) end)
  if not ok or job['Type'] ~= 'DicomModalityStore' or job['Content'] == nil or job['Content']['RemoteAet'] ~= SERVICE_AET then
    return
  end
  local cleared, resources = 0, job['Content']['ParentResources'] or {}
  for _, id in pairs(resources) do
    local marked, value = pcall(RestApiGet, '/instances/' .. id .. '/metadata/' .. MARK)
    if marked and value == 'forwarded' then
      local called, deleted = pcall(RestApiDelete, '/instances/' .. id .. '/metadata/' .. MARK)
      if called and deleted then
        cleared = cleared + 1
      end
    end
  end
  local rest = ''
  if cleared < #resources then -- e.g. "CheckRevisions": true, which refuses a DELETE without If-Match
    rest = '; ' .. (#resources - cleared) .. ' could not be unmarked: resubmit the job (POST /jobs/' .. jobId .. '/resubmit)'
  end
  print('monai-cir: store job ' .. jobId .. ' to ' .. TARGET .. ' failed; ' .. cleared .. ' instance(s) will be sent again with their study\'s next forward' .. rest)
end
