//! The mock's `GET /v1/accounts/{key}` ("Retrieve an account"): a body shaped as Zuora's
//! `AccountDetailResponse` (the model of its Python SDK, `zuora-sdk` 3.x), with every value of
//! the type the SDK's strict model expects, so the SDK parses it.

use serde_json::{json, Value};

/// The account `key` (an account number or id; both echo it), in good standing.
pub(super) fn account(key: &str) -> Value {
    json!({
        "success": true,
        "basicInfo": {
            "id": key,
            "name": "Mock Customer Inc.",
            "accountNumber": key,
            "notes": "",
            "status": "Active",
            "crmId": "",
            "batch": "Batch1",
            "invoiceTemplateId": "2c92c0f9503e1c190150489d7c8b02d6",
            "communicationProfileId": "2c92c0f9503e1c190150489d7d7a02da",
            "profileNumber": "CP-00000001",
            "purchaseOrderNumber": "PO-1001",
            "customerServiceRepName": "",
            "salesRep": "",
            "sequenceSetId": null,
            "parentId": null,
            "partnerAccount": false,
            "tags": "",
            "lastMetricsUpdate": "2024-05-01 08:00:00",
            // As in the account summary's basicInfo; this model keeps them as extra fields.
            "currency": "USD",
            "balance": 125.5,
        },
        "billingAndPayment": {
            "billCycleDay": 1,
            "bcdSettingOption": "ManualSet",
            "currency": "USD",
            "paymentTerm": "Due Upon Receipt",
            "paymentGateway": "Mock Gateway",
            "defaultPaymentMethodId": "2c92c0f85a4b2c5f015a4b6b9f2d0099",
            "invoiceDeliveryPrefsPrint": false,
            "invoiceDeliveryPrefsEmail": true,
            "additionalEmailAddresses": ["billing@example.com"],
            "autoPay": false,
            "paymentMethodCascadingConsent": false,
            "rollUpUsage": false,
        },
        "metrics": {
            "balance": 125.5,
            "currency": "USD",
            "totalInvoiceBalance": 125.5,
            "creditBalance": 0,
            "contractedMrr": 99.0,
            "totalDebitMemoBalance": 0,
            "unappliedCreditMemoAmount": 0,
            "unappliedPaymentAmount": 0,
            "reservedPaymentAmount": 0,
        },
        "billToContact": contact("2c92c0f95a4b2c5f015a4b6b9f2d0001", key),
        "soldToContact": contact("2c92c0f95a4b2c5f015a4b6b9f2d0002", key),
    })
}

fn contact(id: &str, key: &str) -> Value {
    json!({
        "id": id,
        "accountId": key,
        "accountNumber": key,
        "firstName": "Ada",
        "lastName": "Lovelace",
        "nickname": "",
        "address1": "101 Market Street",
        "address2": "Suite 400",
        "city": "San Francisco",
        "county": "",
        "state": "California",
        "zipCode": "94105",
        "country": "United States",
        "taxRegion": "",
        "workEmail": "ada@example.com",
        "personalEmail": "",
        "workPhone": "+1 415 555 0100",
        "homePhone": "",
        "mobilePhone": "",
        "otherPhone": "",
        "otherPhoneType": "Work",
        "fax": "",
        "contactDescription": "",
    })
}
